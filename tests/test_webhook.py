"""POST /starex/webhook/<secret>, /healthz and /metrics over real HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.app import App, close, create_app
from bot.db import repo, upgrade_database
from bot.db.models import STATUS_SENT, Event, Notification
from bot.webhook.payload import MAX_BODY
from tests.fake_telegram import FakeTelegram
from tests.harness import WEBHOOK_SECRET, make_settings

BARCODE = "AB123456789UZ"
URL = f"/starex/webhook/{WEBHOOK_SECRET}"
TEN_MINUTES = timedelta(minutes=10)


def event(state: int = 9, statetime: str = "2026-06-15 14:30:00", **extra: object) -> dict:
    return {"barcode": BARCODE, "state": state, "statetime": statetime, **extra}


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as tg:
        yield tg


@pytest.fixture
async def app(db_url: str, tg: FakeTelegram) -> AsyncIterator[App]:
    # Starex is never reached: the webhook does not call it, and the dispatcher (driven
    # by hand with drain_once, where a test delivers) finds state 9 in the cached names.
    app = create_app(make_settings(db_url, tg.base_url, "http://127.0.0.1:9"))
    await upgrade_database(app.engine)
    async with app.session_factory() as session, session.begin():
        await repo.save_states(session, [(9, "Доставлен", "COMPLETE")])
        for chat in (1, 2):
            await repo.touch_user(session, chat, "en")
            await repo.subscribe(session, chat, BARCODE)
    await app.catalog.load_cached()
    yield app
    await close(app)


@pytest.fixture
async def client(app: App) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(app.web)) as client:
        yield client


async def count(app: App, model: type) -> int:
    async with app.session_factory() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


async def test_event_stored_and_queued_for_each_subscriber(app: App, client: TestClient) -> None:
    response = await client.post(URL, json=event())
    assert response.status == 200
    assert (await response.json())["outcome"] == "stored"
    assert await count(app, Event) == 1
    assert await count(app, Notification) == 2


async def test_repeated_event_answers_200_and_queues_nothing(app: App, client: TestClient) -> None:
    # Starex's retries racing each other, the first arrival among them.
    responses = await asyncio.gather(*(client.post(URL, json=event()) for _ in range(100)))
    assert {r.status for r in responses} == {200}
    outcomes = Counter([(await r.json())["outcome"] for r in responses])
    assert outcomes == {"stored": 1, "duplicate": 99}
    assert await count(app, Event) == 1
    assert await count(app, Notification) == 2


async def test_event_repeated_after_delivery_is_not_sent_again(
    app: App, client: TestClient, tg: FakeTelegram
) -> None:
    async def post() -> str:
        response = await client.post(URL, json=event())
        assert response.status == 200
        return (await response.json())["outcome"]

    assert [await post(), await post()] == ["stored", "duplicate"]  # before delivery
    assert await app.notifier.drain_once() == 2
    # Ten minutes pass: every stored time moves back, so any lease or wait is over.
    async with app.session_factory() as session, session.begin():
        for row in await session.scalars(select(Notification)):
            assert row.status == STATUS_SENT and row.sent_at is not None
            row.created_at -= TEN_MINUTES
            row.sent_at -= TEN_MINUTES
            row.next_attempt_at -= TEN_MINUTES
        for stored in await session.scalars(select(Event)):
            stored.received_at -= TEN_MINUTES
    assert await post() == "duplicate"
    assert await app.notifier.drain_once() == 0
    assert await count(app, Event) == 1
    assert await count(app, Notification) == 2
    for chat in (1, 2):
        (message,) = tg.sent_messages(chat)
        assert BARCODE in message["text"]
    assert len(tg.calls_of("sendMessage")) == 2


async def test_older_event_is_stored_not_pushed(app: App, client: TestClient) -> None:
    await client.post(URL, json=event(state=9, statetime="2026-06-15 14:30:00"))
    response = await client.post(URL, json=event(state=5, statetime="2026-06-14 10:00:00"))
    assert (await response.json())["outcome"] == "stale"
    assert await count(app, Event) == 2
    assert await count(app, Notification) == 2
    async with app.session_factory() as session:
        latest = await repo.latest_event(session, BARCODE)
    assert latest is not None and latest.state == 9


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        json.dumps(event(state="abc")).encode(),
        json.dumps(event(state=None)).encode(),
        json.dumps(event(state=1.5)).encode(),
        json.dumps(event(barcode="")).encode(),
        json.dumps(event(barcode="A" * 300)).encode(),
        json.dumps(event(statetime=None)).encode(),
        json.dumps(event(statetime="")).encode(),
        json.dumps(event(statetime="yesterday")).encode(),
        json.dumps({"barcode": BARCODE}).encode(),
        # 5000 digits: more than int() converts (json.dumps cannot write it either).
        json.dumps(event(state=0)).encode().replace(b'"state": 0', b'"state": 1' + b"0" * 5000),
    ],
)
async def test_bad_input_is_400_with_reason_and_stores_nothing(
    app: App, client: TestClient, body: bytes
) -> None:
    response = await client.post(URL, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"]
    assert await count(app, Event) == 0


async def test_wrong_or_missing_secret_is_404(app: App, client: TestClient) -> None:
    near_misses = (
        WEBHOOK_SECRET[:-1],
        WEBHOOK_SECRET[:1],
        WEBHOOK_SECRET + "x",
        WEBHOOK_SECRET.upper(),
        WEBHOOK_SECRET.replace("-", "_"),
    )
    wrong = ("/starex/webhook/wrong", "/starex/webhook", "/starex/webhook/")
    for url in (*wrong, *(f"/starex/webhook/{secret}" for secret in near_misses)):
        response = await client.post(url, json=event())
        assert response.status == 404
        assert WEBHOOK_SECRET not in await response.text()
    assert await count(app, Event) == 0


async def test_body_limit_is_64_kib(app: App, client: TestClient) -> None:
    def padded_to(size: int) -> bytes:
        body = json.dumps(event(padding="")).encode()
        return body.replace(b'"padding": ""', b'"padding": "' + b"x" * (size - len(body)) + b'"')

    headers = {"Content-Type": "application/json"}
    assert len(padded_to(MAX_BODY)) == MAX_BODY
    assert (await client.post(URL, data=padded_to(MAX_BODY + 1), headers=headers)).status == 413
    assert await count(app, Event) == 0
    assert (await client.post(URL, data=padded_to(MAX_BODY), headers=headers)).status == 200
    assert await count(app, Event) == 1


async def test_get_is_405_and_huge_body_413(app: App, client: TestClient) -> None:
    assert (await client.get(URL)).status == 405
    huge = json.dumps(event(padding="x" * (2 * 1024 * 1024))).encode()
    response = await client.post(
        URL, data=io.BytesIO(huge), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert await count(app, Event) == 0


async def send_raw(client: TestClient, head: bytes, body: bytes = b"") -> bytes:
    """What aiohttp's own client would refuse to send; returns the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head + b"\r\n\r\n" + body)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).strip()
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        (URL, [b"Content-Encoding: gzip"], b"not gzip at all"),  # was a 500
        (URL, [b"Content-Encoding: br"], b"not brotli"),
        ("/healthz", [b"Content-Encoding: zstd"], b"not zstd"),
        ("/healthz", [b"X-Padding: " + b"a" * 9000], b""),  # a header over 8 KiB
    ],
    ids=["bad-gzip", "unknown-encoding", "unknown-encoding-anywhere", "huge-header"],
)
async def test_malformed_http_is_400_with_no_traceback_logged(
    app: App,
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
    path: str,
    headers: list[bytes],
    body: bytes,
) -> None:
    head = b"\r\n".join(
        [
            f"POST {path} HTTP/1.1".encode(),
            b"Host: bot",
            b"Content-Type: application/json",
            f"Content-Length: {len(body)}".encode(),
            *headers,
        ]
    )
    status = await send_raw(client, head, body)
    assert status.split()[1] == b"400", status
    assert await count(app, Event) == 0
    # Anyone can send these: no ERROR, no traceback filling the operator's log.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in caplog.text
    assert (await client.get("/healthz")).status == 200


async def test_storage_failure_is_503_and_health_follows(app: App, client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    # A database server that does not answer (nothing listens on port 9).
    broken = create_app(
        make_settings(
            "postgresql+asyncpg://postgres@127.0.0.1:9/test",
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
        )
    )
    try:
        async with TestClient(TestServer(broken.web)) as broken_client:
            assert (await broken_client.post(URL, json=event())).status == 503
            assert (await broken_client.get("/healthz")).status == 503
    finally:
        await close(broken)


async def test_sqlite_file_deleted_under_the_bot_is_503_not_200(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    db = tmp_path / "bot.db"
    app = create_app(make_settings(f"sqlite+aiosqlite:///{db}", tg.base_url, "http://127.0.0.1:9"))
    await upgrade_database(app.engine)
    try:
        async with TestClient(TestServer(app.web)) as client:
            assert (await client.post(URL, json=event())).status == 200
            # Writes would still succeed, into the unlinked file, and vanish at restart.
            db.unlink()
            later = event(statetime="2026-06-16 10:00:00")
            response = await client.post(URL, json=later)
            assert response.status == 503 and (await response.json())["ok"] is False
            assert (await client.get("/healthz")).status == 503
    finally:
        await close(app)


async def test_metrics_count_webhooks(app: App, client: TestClient) -> None:
    await client.post(URL, json=event())
    await client.post(URL, json=event())
    await client.post(URL, data=b"nonsense")
    text = await (await client.get("/metrics")).text()
    assert 'starex_webhooks_received_total{outcome="stored"} 1.0' in text
    assert 'starex_webhooks_received_total{outcome="duplicate"} 1.0' in text
    assert 'starex_webhooks_rejected_total{reason="invalid"} 1.0' in text
    assert "notifications_pending" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Number text past int()'s 4300-digit limit or float's range. json.dumps cannot write
# such an int, so these bodies are put together as text.
huge_numbers = st.integers(4301, 6000).map(lambda n: "9" * n) | st.sampled_from(
    ["1e999", "-1e999", "1" + "0" * 400 + ".5"]
)
json_texts = json_values.map(json.dumps) | huge_numbers


def object_text(barcode: str, state: str, statetime: str, extra: str) -> bytes:
    fields = {"barcode": barcode, "state": state, "statetime": statetime, "extra": extra}
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


webhook_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"barcode": json_values | st.text(), "state": json_values, "statetime": json_values}
    ).map(lambda v: json.dumps(v).encode()),
    st.builds(object_text, json_texts, json_texts, json_texts, json_texts),
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_any_body_gets_200_400_or_413_never_500(app: App, client: TestClient) -> None:
    seen: set[int] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=webhook_bodies)
    def probe(body: bytes) -> None:
        # hypothesis drives a sync function; the app runs on this test's loop.
        future = asyncio.run_coroutine_threadsafe(post(body), loop)
        seen.add(future.result(timeout=10))

    async def post(body: bytes) -> int:
        response = await client.post(URL, data=body)
        return response.status

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(probe)
    assert seen <= {200, 400, 413}, seen
    assert 400 in seen
    assert (await client.get("/healthz")).status == 200


async def test_body_arriving_in_pieces_is_read_whole(app: App, client: TestClient) -> None:
    raw = json.dumps(event()).encode()

    async def pieces() -> AsyncIterator[bytes]:  # chunked, with a pause mid-body
        yield raw[:20]
        await asyncio.sleep(0.2)
        yield raw[20:]

    response = await client.post(URL, data=pieces(), headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert await count(app, Event) == 1


async def test_huge_chunked_body_is_413(app: App, client: TestClient) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(40):  # 2.5 MB, no Content-Length
            yield b" " * 65536

    response = await client.post(URL, data=endless())
    assert response.status == 413
    assert await count(app, Event) == 0
