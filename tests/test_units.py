"""Pure functions: barcodes, webhook payloads, locale choice, rendering and splitting."""

from __future__ import annotations

import json
import re
from datetime import datetime
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest

from bot.barcodes import from_args, normalize, split_barcodes
from bot.i18n import Translator, map_language_code
from bot.render import esc, mask_name, render_notification, render_trace, split_blocks
from bot.starex.models import Trace
from bot.webhook.payload import BadPayload, parse_event

TASHKENT = ZoneInfo("Asia/Tashkent")


@pytest.fixture(scope="module")
def i18n() -> Translator:
    return Translator(default_locale="ru")


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("AB123456789UZ", "AB123456789UZ"),
        ("ab-1234 5678-9uz", "AB123456789UZ"),
        ("ab123456789uz", "AB123456789UZ"),
        ("hello", None),
        ("ABCDEFGH", None),  # no digit: a word, not a barcode
        ("12345", None),
        ("AB123456789UZ!", None),
        ("АВ123456789UZ", "AB123456789UZ"),  # Cyrillic А and В, typed on a Russian layout
        ("ав-123456789uz", "AB123456789UZ"),
        ("Ж123456789", None),  # Cyrillic that looks like no Latin letter
        ("AB123456789UZ\u200b", "AB123456789UZ"),  # a zero-width space from copy-paste
        ("\ufeffAB\u2060123456789UZ", "AB123456789UZ"),
        ("AB–123456789–UZ", "AB123456789UZ"),  # en dashes, as typed by autocorrect
        ("AB123456789ЮZ", None),
    ],
)
def test_normalize(typed: str, expected: str | None) -> None:
    assert normalize(typed) == expected


def test_split_barcodes_keeps_order_and_drops_repeats() -> None:
    valid, rejected = split_barcodes("ab123456789uz, CD987654321UZ\nab-123456789-uz junk 12-ab")
    assert valid == ["AB123456789UZ", "CD987654321UZ"]
    assert rejected == ["12-ab"]  # a word without digits is just a word


def test_split_barcodes_in_a_sentence() -> None:
    assert split_barcodes("Где моя посылка AB123456789UZ?") == (["AB123456789UZ"], [])
    assert split_barcodes("«ab123456789uz». (CD987654321UZ)")[0] == [
        "AB123456789UZ",
        "CD987654321UZ",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("AB123456789UZ please", ("AB123456789UZ", "please")),
        ("AB123456789UZ Gift 2 mum", ("AB123456789UZ", "Gift 2 mum")),
        ("AB 1234 5678 9UZ", ("AB123456789UZ", None)),
        ("ab-1234 5678 9uz", ("AB123456789UZ", None)),
        ("ab123456789uz.", ("AB123456789UZ", None)),
        ("hello there", (None, "there")),
        ("ﬀ123456789", (None, None)),  # a ligature upper() would turn into "FF"
        ("AB123456789UZ\n", ("AB123456789UZ", None)),
        ("", (None, None)),
    ],
)
def test_from_args(args: str, expected: tuple[str | None, str | None]) -> None:
    assert from_args(args) == expected


def body(**fields: object) -> bytes:
    data = {"barcode": "AB123456789UZ", "state": 12, "statetime": "2026-06-15 14:30:00"}
    data.update(fields)
    return json.dumps(data).encode()


def raw_body(state: str, extra: str = "0") -> bytes:
    """A body with JSON number text as is: json.dumps cannot write a 5000-digit int."""
    return (
        f'{{"barcode": "AB123456789UZ", "state": {state}, '
        f'"statetime": "2026-06-15 14:30:00", "extra": {extra}}}'
    ).encode()


def test_parse_event_converts_tashkent_time_to_utc() -> None:
    event = parse_event(body(), TASHKENT)
    assert event.barcode == "AB123456789UZ"
    assert event.state == 12
    assert event.statetime == datetime(2026, 6, 15, 9, 30)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"state": "12"}, 12),
        ({"statetime": "2026-06-15T14:30:00"}, datetime(2026, 6, 15, 9, 30)),
        ({"statetime": "2026-06-15T14:30:00+00:00"}, datetime(2026, 6, 15, 14, 30)),
        ({"statetime": "2026-06-15 14:30"}, datetime(2026, 6, 15, 9, 30)),
    ],
)
def test_parse_event_accepts_lenient_forms(fields: dict, expected: object) -> None:
    event = parse_event(body(**fields), TASHKENT)
    assert expected in (event.state, event.statetime)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'"text"',
        body(state="abc"),
        body(state=None),
        body(state=1.5),
        body(state=True),
        body(barcode=""),
        body(barcode="A" * 300),
        body(barcode=None),
        body(statetime=None),
        body(statetime=""),
        body(statetime="15.06.2026 14:30"),
        body(statetime="2026-06-15"),
        body(statetime="9999-12-31 23:59:59"),  # would make every real change stale
        body(statetime="0001-01-01T00:00:00+00:00"),  # no zone can show it
        body(statetime="1999-12-31 23:59:59"),
        body(state="١٢"),  # Arabic-Indic digits
        body(state=" 12"),
        body(barcode="ﬀ123456789"),
        json.dumps({"state": 1}).encode(),
        # Past Python's 4300-digit limit for int(): json.loads raises a bare ValueError.
        raw_body(state="1" + "0" * 5000),
        raw_body(state="-" + "9" * 4301),
        raw_body(state="12", extra="1" + "0" * 5000),  # even in a field that is ignored
        raw_body(state="1e999"),  # json.loads makes it inf
        raw_body(state="1" + "0" * 5000 + ".5"),
        raw_body(state="NaN"),
        raw_body(state="-Infinity"),
    ],
)
def test_parse_event_rejects(raw: bytes) -> None:
    with pytest.raises(BadPayload):
        parse_event(raw, TASHKENT)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ru-RU", "ru"),
        ("uz", "uz"),
        ("uz-Cyrl", "uz"),
        ("en-GB", "en"),
        ("de", None),
        ("", None),
        (None, None),
    ],
)
def test_map_language_code(code: str | None, expected: str | None) -> None:
    assert map_language_code(code) == expected


def test_choose_locale_prefers_choice_then_telegram_then_default(i18n: Translator) -> None:
    assert i18n.choose_locale("uz", "en-GB") == "uz"
    assert i18n.choose_locale(None, "en-GB") == "en"
    assert i18n.choose_locale(None, "de") == "ru"


def test_status_name_rules(i18n: Translator) -> None:
    # ru: Starex's own name
    assert i18n.status_name(9, locale="ru", name="Доставлен", advanced="COMPLETE") == "Доставлен"
    # uz/en: the project's translation keyed by `advanced`, in any letter case
    assert i18n.status_name(9, locale="en", name="Доставлен", advanced="complete") == "Delivered"
    assert i18n.status_name(9, locale="uz", name="Доставлен", advanced="COMPLETE") != "Доставлен"
    # no translation: Starex's name
    assert i18n.status_name(77, locale="en", name="Новое", advanced="BRAND_NEW") == "Новое"
    # nothing known: a generic text with the number, never empty
    assert "77" in i18n.status_name(77, locale="en", name=None, advanced=None)
    assert "77" in i18n.status_name(77, locale="ru", name=None, advanced=None)


def test_mask_name() -> None:
    assert mask_name("Alisher Karimov") == "A*** K***"
    assert mask_name(None) == ""
    assert "Karimov" not in mask_name("Alisher  Karimov ")
    # Copy-paste leftovers are no words; a quote or a bracket is not an initial.
    assert mask_name("\u200b Alisher - «Karimov»") == "A*** K***"


class StrictTelegramHTML(HTMLParser):
    ALLOWED = frozenset({"b", "i", "u", "s", "code", "pre", "a"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        assert tag in self.ALLOWED, tag
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag, tag


def assert_balanced_html(text: str) -> None:
    assert not re.search(r"&(?!(lt|gt|amp|quot|#\d+);)", text), text
    parser = StrictTelegramHTML()
    parser.feed(text)
    parser.close()
    assert parser.stack == []


def test_notification_escapes_outside_text(i18n: Translator) -> None:
    text = render_notification(
        i18n,
        "en",
        barcode="AB123456789UZ",
        status="<Sorting> & Co",
        when=datetime(2026, 6, 15, 14, 30),
        label="<<Gift>> & Co </b>",
    )
    assert_balanced_html(text)
    assert "&lt;Sorting&gt; &amp; Co" in text
    assert "15.06.2026 14:30" in text


def test_long_trace_splits_under_limit_in_order(i18n: Translator) -> None:
    steps = [
        {
            "code": i,
            "name": f"<Шаг> & {i} " + "x" * 150,
            "advansed": None,
            "statetime": f"2026-06-10 {i // 60:02d}:{i % 60:02d}:00",
        }
        for i in range(120)
    ]
    trace = Trace.model_validate(
        {
            "barcode": "AB123456789UZ",
            "date": "2026-06-01 09:00:00",
            "weight": 1.5,
            "recipient": "Alisher Karimov",
            "trace": steps,
        }
    )
    messages = render_trace(i18n, "en", trace, lambda step: step.name or str(step.code))
    assert len(messages) > 1
    for message in messages:
        assert len(message) <= 4096
        assert_balanced_html(message)
    joined = "\n".join(messages)
    positions = [joined.index(f"&lt;Шаг&gt; &amp; {i} ") for i in range(120)]
    assert positions == sorted(positions)
    assert "A*** K***" in joined and "Karimov" not in joined


@pytest.mark.parametrize(
    ("date", "shown"),
    [("2026-06-01 09:05:00", "01.06.2026 09:05"), ("2026-06-01", "01.06.2026"), (None, None)],
)
def test_acceptance_date_shown_as_given(
    i18n: Translator, date: str | None, shown: str | None
) -> None:
    trace = Trace.model_validate({"barcode": "AB123456789UZ", "date": date, "trace": []})
    (text,) = render_trace(i18n, "en", trace, lambda step: str(step.code))
    accepted = [line for line in text.split("\n") if line.startswith("Accepted")]
    assert accepted == ([f"Accepted: {shown}"] if shown else [])


def test_a_step_without_a_time_shows_its_name_alone(i18n: Translator) -> None:
    trace = Trace.model_validate(
        {
            "barcode": "AB123456789UZ",
            "trace": [
                {"code": 1, "statetime": None},
                {"code": 9, "statetime": "2026-06-15 14:30:00"},
            ],
        }
    )
    (text,) = render_trace(i18n, "en", trace, lambda step: f"S{step.code}")
    assert text.split("\n")[-2:] == ["<b>S1</b>", "15.06.2026 14:30 — <b>S9</b>"]


@pytest.mark.parametrize("recipient", [None, "", "   "])
def test_no_recipient_line_without_a_name(i18n: Translator, recipient: str | None) -> None:
    trace = Trace.model_validate({"barcode": "AB123456789UZ", "recipient": recipient})
    (text,) = render_trace(i18n, "en", trace, lambda step: str(step.code))
    assert "Recipient" not in text


def test_split_blocks_never_exceeds_limit() -> None:
    blocks = ["a" * 40] * 10 + ["b" * 200]
    messages = split_blocks(blocks, limit=100)
    assert all(len(m) <= 100 for m in messages)
    assert "".join(messages).count("a") == 400


def test_esc_cuts_absurd_fields() -> None:
    assert len(esc("<" * 1000)) < 1000
