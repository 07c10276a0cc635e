import asyncio
import base64
import logging
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx

from bot.starex import (
    StarexAuthError,
    StarexClient,
    StarexNotFound,
    StarexUnavailable,
    State,
    Trace,
    TraceStep,
)
from tests.fake_starex import LOGIN as FAKE_LOGIN
from tests.fake_starex import PASSWORD as FAKE_PASSWORD
from tests.fake_starex import FakeStarex
from tests.harness import until

BASE = "https://starex.test"
LOGIN = "shop-login"
PASSWORD = "s3cr3t-Pa55"
BARCODE = "AB123456789UZ"

# Verbatim examples from starex-integration.txt.
STATES_EXAMPLE = {
    "success": True,
    "data": [
        {"code": 0, "name": "Ожидает синхронизации", "advanced": "AWAITING_SYNC"},
        {"code": 1, "name": "Новый", "advanced": "NEW"},
        {"code": 9, "name": "Доставлен", "advanced": "COMPLETE"},
    ],
}
TRACE_EXAMPLE = {
    "success": True,
    "data": {
        "barcode": "AB123456789UZ",
        "date": "2026-06-10 09:00:00",
        "weight": 1.5,
        "recipient": "First Last",
        "trace": [
            {"code": 1, "name": "Новый", "advansed": "NEW", "statetime": "2026-06-10 09:00:00"},
            {
                "code": 9,
                "name": "Доставлен",
                "advansed": "COMPLETE",
                "statetime": "2026-06-15 14:30:00",
            },
        ],
    },
}
NOT_FOUND_ENVELOPE = {"success": False, "error": {"code": 422, "message": "Order not found"}}


def trace_payload(**data):
    return {"success": True, "data": {"barcode": BARCODE, **data}}


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        router.get("/api/v1/dictionaries/states", name="states")
        router.get("/api/v1/order/trace", name="trace")
        yield router


@pytest.fixture
def calls():
    return []


@pytest.fixture
async def client(api, calls):
    starex = StarexClient(
        BASE,
        LOGIN,
        PASSWORD,
        timeout=2.0,
        backoff=0,
        on_request=lambda endpoint, seconds, error: calls.append((endpoint, seconds, error)),
        zone=ZoneInfo("Asia/Tashkent"),
    )
    yield starex
    await starex.aclose()


# --- happy paths -------------------------------------------------------------


async def test_get_states_parses_doc_example(api, client):
    api["states"].respond(json=STATES_EXAMPLE)

    states = await client.get_states()

    assert states == [
        State(code=0, name="Ожидает синхронизации", advanced="AWAITING_SYNC"),
        State(code=1, name="Новый", advanced="NEW"),
        State(code=9, name="Доставлен", advanced="COMPLETE"),
    ]
    assert api["states"].call_count == 1


async def test_get_trace_parses_doc_example(api, client):
    api["trace"].respond(json=TRACE_EXAMPLE)

    trace = await client.get_trace(BARCODE)

    assert trace == Trace(
        barcode=BARCODE,
        date=datetime(2026, 6, 10, 9, 0, 0),
        weight=1.5,
        recipient="First Last",
        steps=[
            TraceStep(
                code=1, name="Новый", advanced="NEW", statetime=datetime(2026, 6, 10, 9, 0, 0)
            ),
            TraceStep(
                code=9,
                name="Доставлен",
                advanced="COMPLETE",
                statetime=datetime(2026, 6, 15, 14, 30, 0),
            ),
        ],
    )
    assert all(step.statetime.tzinfo is None for step in trace.steps)
    assert api["trace"].calls.last.request.url.params["barcode"] == BARCODE


async def test_barcode_is_sent_url_encoded(api, client):
    api["trace"].respond(json=trace_payload(trace=[]))

    await client.get_trace("A&B 1")

    request = api["trace"].calls.last.request
    assert request.url.params["barcode"] == "A&B 1"
    assert b"barcode=A%26B+1" in request.url.query


async def test_requests_send_basic_auth_and_accept_json(api, client):
    api["states"].respond(json=STATES_EXAMPLE)

    await client.get_states()

    headers = api["states"].calls.last.request.headers
    expected = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    assert headers["Authorization"] == f"Basic {expected}"
    assert headers["Accept"] == "application/json"


@pytest.mark.parametrize("base_url", [f"{BASE}/starex", f"{BASE}/starex/"])
async def test_base_url_with_or_without_trailing_slash(base_url):
    with respx.mock(assert_all_called=True) as router:
        route = router.get(f"{BASE}/starex/api/v1/dictionaries/states").respond(json=STATES_EXAMPLE)
        async with StarexClient(base_url, LOGIN, PASSWORD) as starex:
            states = await starex.get_states()

    assert [s.code for s in states] == [0, 1, 9]
    assert route.call_count == 1


# --- leniency ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["advansed", "advanced"])
async def test_step_accepts_both_spellings_of_advanced(api, client, key):
    api["trace"].respond(json=trace_payload(trace=[{"code": 9, key: "COMPLETE"}]))

    trace = await client.get_trace(BARCODE)

    assert trace.steps[0].advanced == "COMPLETE"


async def test_null_fields_become_none(api, client):
    api["trace"].respond(
        json=trace_payload(
            date=None,
            weight=None,
            recipient=None,
            trace=[{"code": 1, "name": None, "advansed": None, "statetime": None}],
        )
    )

    trace = await client.get_trace(BARCODE)

    assert (trace.date, trace.weight, trace.recipient) == (None, None, None)
    assert trace.steps == [TraceStep(code=1, name=None, advanced=None, statetime=None)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.5", 1.5),
        (" 2,25 ", 2.25),
        (3, 3.0),
        ("", None),
        ("heavy", None),
        ("nan", None),
        (1e25, None),  # past what Babel can format: a placeholder, not a weight
        (-1, None),
        (-0.0, None),  # shown as "-0 kg"
        (0, None),  # not weighed
        (1e-300, None),  # shown as "0 kg"
    ],
)
async def test_weight_is_lenient(api, client, raw, expected):
    api["trace"].respond(json=trace_payload(weight=raw, trace=[]))

    trace = await client.get_trace(BARCODE)

    assert trace.weight == expected


async def test_trace_null_means_no_steps(api, client):
    api["trace"].respond(json=trace_payload(trace=None))

    trace = await client.get_trace(BARCODE)

    assert trace.steps == []
    assert trace.barcode == BARCODE


@pytest.mark.parametrize(
    "statetime",
    [
        "",
        "   ",
        "yesterday",
        "0000-00-00 00:00:00",
        1718000000,
        # Placeholders: moved into Tashkent's zone they would overflow the calendar.
        "0001-01-01T00:00:00+09:00",
        "9999-12-31T23:59:59+00:00",
        "0001-01-01 00:00:00",
    ],
)
async def test_bad_statetime_becomes_none_without_losing_the_trace(api, client, statetime):
    api["trace"].respond(
        json=trace_payload(
            trace=[
                {"code": 1, "statetime": statetime},
                {"code": 9, "statetime": "2026-06-15 14:30:00"},
            ]
        )
    )

    trace = await client.get_trace(BARCODE)

    assert [s.statetime for s in trace.steps] == [None, datetime(2026, 6, 15, 14, 30)]


@pytest.mark.parametrize(
    "statetime", ["2026-06-15 14:30:00+05:00", "2026-06-15T09:30:00Z", "2026-06-15T12:30:00+03:00"]
)
async def test_a_time_with_an_offset_is_read_in_starex_zone(api, client, statetime):
    api["trace"].respond(
        json=trace_payload(date=statetime, trace=[{"code": 9, "statetime": statetime}])
    )

    trace = await client.get_trace(BARCODE)

    # Naive in STAREX_TIMEZONE (Tashkent, UTC+5), as every other Starex time.
    assert trace.steps[0].statetime == datetime(2026, 6, 15, 14, 30)
    assert trace.date == datetime(2026, 6, 15, 14, 30)


async def test_step_with_missing_or_invalid_code_is_dropped(api, client, caplog):
    api["trace"].respond(
        json=trace_payload(
            trace=[
                {"name": "no code"},
                {"code": "abc"},
                "not an object",
                {"code": 9, "name": "Доставлен"},
            ]
        )
    )

    trace = await client.get_trace(BARCODE)

    assert [s.code for s in trace.steps] == [9]
    assert "Dropped malformed Starex TraceStep" in caplog.text


async def test_unknown_fields_are_ignored(api, client):
    payload = trace_payload(
        sender="Shop", trace=[{"code": 1, "advansed": "NEW", "location": "Tashkent"}]
    )
    payload["meta"] = {"version": 2}
    api["trace"].respond(json=payload)

    trace = await client.get_trace(BARCODE)

    assert trace.steps == [TraceStep(code=1, advanced="NEW")]


async def test_missing_barcode_falls_back_to_the_requested_one(api, client):
    api["trace"].respond(json={"success": True, "data": {"trace": [{"code": 1}]}})

    trace = await client.get_trace(BARCODE)

    assert trace.barcode == BARCODE


async def test_malformed_state_entries_are_dropped(api, client):
    api["states"].respond(
        json={
            "success": True,
            "data": [
                {"code": 1, "advanced": "NEW"},
                {"name": "no code"},
                # Past the database's integers (the refresh crashed storing it on SQLite).
                {"code": 10**20, "name": "huge"},
                {"code": -1, "name": "negative"},
            ],
        }
    )

    states = await client.get_states()

    assert states == [State(code=1, advanced="NEW")]


async def test_a_field_of_another_type_does_not_lose_the_trace(api, client):
    api["trace"].respond(
        json=trace_payload(
            recipient=12, trace=[{"code": 9, "name": ["x"], "advansed": 7, "statetime": None}]
        )
    )

    trace = await client.get_trace(BARCODE)

    assert trace.recipient == "12"
    assert trace.steps == [TraceStep(code=9, name=None, advanced="7", statetime=None)]


# --- not found / auth --------------------------------------------------------


@pytest.mark.parametrize("http_status", [200, 404, 422, 500])
@pytest.mark.parametrize("error_code", [404, 422])
async def test_error_envelope_means_not_found_whatever_the_status(
    api, client, calls, http_status, error_code
):
    envelope = {"success": False, "error": {"code": error_code, "message": "Order not found"}}
    api["trace"].respond(http_status, json=envelope)

    with pytest.raises(StarexNotFound) as info:
        await client.get_trace(BARCODE)

    assert info.value.status == http_status
    assert "Order not found" in info.value.detail
    assert api["trace"].call_count == 1
    assert [c[2] for c in calls] == ["not_found"]


async def test_plain_http_404_is_unavailable_not_not_found(api, client, calls):
    api["trace"].respond(404, text="<html>Not Found</html>")

    with pytest.raises(StarexUnavailable) as info:
        await client.get_trace(BARCODE)

    assert not isinstance(info.value, StarexNotFound)
    assert info.value.status == 404
    assert api["trace"].call_count == 1  # a wrong URL stays wrong: not retried
    assert [c[2] for c in calls] == ["http_404"]


async def test_success_with_null_data_is_not_found(api, client):
    api["trace"].respond(json={"success": True, "data": None})

    with pytest.raises(StarexNotFound):
        await client.get_trace(BARCODE)


async def test_states_404_is_unavailable_not_not_found(api, client):
    api["states"].respond(404, json=NOT_FOUND_ENVELOPE)

    with pytest.raises(StarexUnavailable) as info:
        await client.get_states()

    assert not isinstance(info.value, StarexNotFound)


@pytest.mark.parametrize("http_status", [401, 403])
async def test_http_auth_failure_is_auth_error_and_not_retried(api, client, calls, http_status):
    api["trace"].respond(http_status, text="Unauthorized")

    with pytest.raises(StarexAuthError) as info:
        await client.get_trace(BARCODE)

    assert info.value.status == http_status
    assert api["trace"].call_count == 1
    assert [c[2] for c in calls] == ["auth"]


async def test_auth_error_code_in_envelope_is_auth_error(api, client):
    api["states"].respond(200, json={"success": False, "error": {"code": 401, "message": "bad"}})

    with pytest.raises(StarexAuthError):
        await client.get_states()


# --- unavailable -------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (httpx.Response(500, html="<html><body>Internal Server Error</body></html>"), "http_500"),
        (httpx.Response(502, text="Bad Gateway"), "http_502"),
        (httpx.Response(503, json={"success": False, "error": {"code": 500}}), "http_503"),
    ],
)
async def test_server_errors_are_unavailable_after_retries(api, client, calls, response, kind):
    api["trace"].mock(return_value=response)

    with pytest.raises(StarexUnavailable) as info:
        await client.get_trace(BARCODE)

    assert info.value.status == response.status_code
    assert api["trace"].call_count == 3  # first try + retries=2
    assert [c[2] for c in calls] == [kind] * 3


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b""),
        httpx.Response(200, text="OK"),
        httpx.Response(200, html="<html>maintenance</html>"),
        httpx.Response(200, json=["not", "an", "envelope"]),
        httpx.Response(200, json={"data": {"barcode": BARCODE}}),
        httpx.Response(200, json={"success": True, "data": ["not", "an", "object"]}),
        httpx.Response(200, json={"success": True, "data": {"trace": "nope"}}),
    ],
)
async def test_unusable_200_bodies_are_unavailable_and_not_retried(api, client, calls, response):
    api["trace"].mock(return_value=response)

    with pytest.raises(StarexUnavailable) as info:
        await client.get_trace(BARCODE)

    assert info.value.kind == "bad_body"
    assert api["trace"].call_count == 1
    assert [c[2] for c in calls] == ["bad_body"]


async def test_envelope_with_other_code_is_unavailable(api, client):
    api["trace"].respond(200, json={"success": False, "error": {"code": 400, "message": "?"}})

    with pytest.raises(StarexUnavailable):
        await client.get_trace(BARCODE)

    assert api["trace"].call_count == 1


async def test_server_error_then_success_is_retried(api, client, calls):
    api["trace"].mock(
        side_effect=[httpx.Response(500, text="oops"), httpx.Response(200, json=TRACE_EXAMPLE)]
    )

    trace = await client.get_trace(BARCODE)

    assert trace.barcode == BARCODE
    assert api["trace"].call_count == 2
    assert [(c[0], c[2]) for c in calls] == [("trace", "http_500"), ("trace", None)]
    assert all(c[1] >= 0 for c in calls)


@pytest.mark.parametrize("http_status", [400, 429])
async def test_client_errors_are_not_retried(api, client, http_status):
    api["trace"].respond(http_status, text="nope")

    with pytest.raises(StarexUnavailable) as info:
        await client.get_trace(BARCODE)

    assert info.value.status == http_status
    assert api["trace"].call_count == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ReadTimeout, "timeout"),
        (httpx.ConnectTimeout, "timeout"),
        (httpx.ConnectError, "connect"),
    ],
)
async def test_network_failures_are_unavailable_after_retries(api, client, calls, error, kind):
    api["states"].mock(side_effect=error)

    with pytest.raises(StarexUnavailable) as info:
        await client.get_states()

    assert info.value.status is None
    assert api["states"].call_count == 3
    assert [c[2] for c in calls] == [kind] * 3


async def test_connect_error_then_success_is_retried(api, client):
    api["states"].mock(side_effect=[httpx.ConnectError, httpx.Response(200, json=STATES_EXAMPLE)])

    states = await client.get_states()

    assert len(states) == 3
    assert api["states"].call_count == 2


async def test_whole_attempt_is_capped_by_timeout(api):
    async def slow(request):
        await asyncio.sleep(5)
        return httpx.Response(200, json=STATES_EXAMPLE)

    api["states"].mock(side_effect=slow)
    kinds = []
    async with StarexClient(
        BASE, LOGIN, PASSWORD, timeout=0.05, retries=0, on_request=lambda e, s, k: kinds.append(k)
    ) as starex:
        started = time.perf_counter()
        with pytest.raises(StarexUnavailable):
            await starex.get_states()

    assert time.perf_counter() - started < 2
    assert kinds == ["timeout"]


async def test_retries_back_off_exponentially(api):
    api["states"].respond(503)
    async with StarexClient(BASE, LOGIN, PASSWORD, retries=2, backoff=0.05) as starex:
        started = time.perf_counter()
        with pytest.raises(StarexUnavailable):
            await starex.get_states()
        elapsed = time.perf_counter() - started

    assert api["states"].call_count == 3
    assert elapsed >= 0.05 + 0.1 - 0.01


async def test_failing_metrics_callback_does_not_break_requests(api):
    def broken(endpoint, seconds, error):
        raise RuntimeError("metrics down")

    api["states"].respond(json=STATES_EXAMPLE)
    async with StarexClient(BASE, LOGIN, PASSWORD, on_request=broken) as starex:
        assert len(await starex.get_states()) == 3


# --- secrets and logs ----------------------------------------------------------


async def test_failures_are_logged_without_the_password(api, client, caplog):
    caplog.set_level(logging.DEBUG)
    api["trace"].mock(
        side_effect=[
            httpx.Response(500, text=f"echo {PASSWORD}"),
            httpx.ConnectError,
            httpx.Response(401, text=f"bad password {PASSWORD}"),
        ]
    )

    with pytest.raises(StarexAuthError) as info:
        await client.get_trace(BARCODE)

    token = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    warnings = [r for r in caplog.records if r.name == "bot.starex" and r.levelname == "WARNING"]
    assert len(warnings) == 3
    assert "500" in warnings[0].getMessage()
    assert "401" in warnings[2].getMessage()
    for secret in (PASSWORD, token):
        assert secret not in caplog.text
        assert secret not in str(info.value)


async def test_client_is_closed_by_context_manager(api):
    api["states"].respond(json=STATES_EXAMPLE)
    async with StarexClient(BASE, LOGIN, PASSWORD) as starex:
        await starex.get_states()

    with pytest.raises(StarexUnavailable) as info:  # what every caller handles already
        await starex.get_states()
    assert info.value.kind == "closed"


async def test_closing_the_client_cuts_off_a_look_up_under_way(caplog):
    """Shutdown closes the client so people waiting are answered from what is stored:
    the look-up fails at once as "closed", is not retried, and is no WARNING."""
    async with FakeStarex() as starex:
        starex.delay = 30  # hangs
        client = StarexClient(starex.base_url, FAKE_LOGIN, FAKE_PASSWORD, retries=2, timeout=60)
        lookup = asyncio.create_task(client.get_trace(BARCODE))

        async def asked() -> bool:
            return bool(starex.requests)

        await until(asked, 5, "the look-up under way")
        await client.aclose()
        with pytest.raises(StarexUnavailable) as info:
            await asyncio.wait_for(lookup, 2)
    assert info.value.kind == "closed"
    assert len(starex.requests) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
