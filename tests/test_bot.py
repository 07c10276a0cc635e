"""The bot as a person uses it: real aiogram polling against the fake Bot API,
real httpx against the fake Starex, a real database."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bot.app import App
from bot.db import repo
from bot.telegram.parcels import LOOKUPS_PER_MINUTE
from bot.telegram.routers.subscriptions import MAX_SUBSCRIPTIONS
from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import make_settings, running, until, web_client, webhook_path

CHAT = 1001
BARCODE = "AB123456789UZ"


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def starex() -> AsyncIterator[FakeStarex]:
    async with FakeStarex() as fake:
        fake.add_trace(BARCODE, [(1, "2026-06-10 09:00:00"), (9, "2026-06-15 14:30:00")])
        yield fake


@pytest.fixture
async def app(tmp_path, tg: FakeTelegram, starex: FakeStarex) -> AsyncIterator[App]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        tg.base_url,
        starex.base_url,
        admin_ids="7",
    )
    async with running(settings) as app:
        yield app


async def ask(
    tg: FakeTelegram, text: str, *, chat: int = CHAT, language: str = "en", replies: int = 1
) -> list[str]:
    before = len(tg.sent_messages(chat))
    tg.message(chat, text, language_code=language)
    sent = await tg.wait_for_messages(before + replies, chat_id=chat)
    return [m["text"] for m in sent[before:]]


async def test_start_greets_in_telegram_language(app: App, tg: FakeTelegram) -> None:
    (en,) = await ask(tg, "/start", language="en-GB")
    (ru,) = await ask(tg, "/start", chat=2002, language="ru-RU")
    (uz,) = await ask(tg, "/start", chat=3003, language="uz")
    (de,) = await ask(tg, "/start", chat=4004, language="de")
    assert "Starex" in en and "/help" in en
    assert len({en, ru, uz}) == 3  # three languages, three texts
    assert de == ru  # DEFAULT_LANGUAGE is ru


async def test_help_lists_every_command(app: App, tg: FakeTelegram) -> None:
    (text,) = await ask(tg, "/help")
    for command in ("/track", "/subscribe", "/unsubscribe", "/list", "/language"):
        assert command in text


async def test_command_menu_set_per_language(app: App, tg: FakeTelegram) -> None:
    assert set(tg.commands) >= {"", "ru", "uz", "en"}
    names = [c["command"] for c in tg.commands["uz"]]
    assert "track" in names and "subscribe" in names
    assert tg.commands["en"] != tg.commands["ru"]


async def test_track_shows_decoded_history_oldest_first(app: App, tg: FakeTelegram) -> None:
    (text,) = await ask(tg, "/track ab-1234 5678 9uz")
    assert BARCODE in text
    assert "A*** K***" in text and "Karimov" not in text
    assert "10.06.2026 09:00" in text and "15.06.2026 14:30" in text
    assert text.index("10.06.2026 09:00") < text.index("15.06.2026 14:30")
    assert "Delivered" in text  # en: translation of COMPLETE
    (ru,) = await ask(tg, f"/track {BARCODE}", chat=2002, language="ru")
    assert "Доставлен" in ru  # ru: Starex's own name


async def test_track_errors_are_friendly(app: App, tg: FakeTelegram, starex: FakeStarex) -> None:
    (missing,) = await ask(tg, "/track ZZ000000000UZ")
    assert "ZZ000000000UZ" in missing and "not found" in missing
    (bad,) = await ask(tg, "/track hello")
    assert "AB123456789UZ" in bad  # the hint shows the expected form
    (usage,) = await ask(tg, "/track")
    assert "/track AB123456789UZ" in usage
    starex.fault = (500, "<html>oops</html>")
    (down,) = await ask(tg, f"/track {BARCODE}")
    assert "try again" in down and "oops" not in down


async def test_subscribing_again_with_a_label_renames_it(app: App, tg: FakeTelegram) -> None:
    await ask(tg, f"/subscribe {BARCODE}")
    (again,) = await ask(tg, f"/subscribe {BARCODE} Gift for mum")
    assert "already" in again and "Gift for mum" in again
    await ask(tg, BARCODE)  # a plain look-up, then its subscribe button: no label given
    tg.callback(CHAT, f"p:sub:{BARCODE}")

    async def answered() -> bool:
        return bool(tg.calls_of("answerCallbackQuery"))

    await until(answered, 5, "the tap answered")
    (listing,) = await ask(tg, "/list")
    assert "Gift for mum" in listing


async def test_starex_down_replies_still_name_each_parcel(
    app: App, tg: FakeTelegram, starex: FakeStarex
) -> None:
    starex.fault = (503, "down")
    first, second = "AB111111111UZ", "AB222222222UZ"  # nothing stored for either
    replies = await ask(tg, f"{first} {second}", replies=2)
    for barcode, text in zip((first, second), replies, strict=True):
        assert barcode in text and UNAVAILABLE["en"] in text
    await ask(tg, f"/subscribe {first}")
    (listing,) = await ask(tg, "/list")
    assert first in listing and UNAVAILABLE["en"] in listing


async def test_subscribe_list_unsubscribe(app: App, tg: FakeTelegram) -> None:
    (text,) = await ask(tg, f"/subscribe {BARCODE} <<Gift>> & Co")
    assert "following" in text and "Delivered" in text
    # sent escaped, and accepted by the fake's strict HTML check
    assert "&lt;&lt;Gift&gt;&gt; &amp; Co" in text
    (again,) = await ask(tg, f"/subscribe {BARCODE}")
    assert "already" in again
    async with app.session_factory() as session:
        subs = await repo.list_subscriptions(session, CHAT)
    assert [s.barcode for s in subs] == [BARCODE]
    (listing,) = await ask(tg, "/list")
    assert BARCODE in listing
    (gone,) = await ask(tg, f"/unsubscribe {BARCODE}")
    assert "no longer" in gone
    (empty,) = await ask(tg, "/list")
    assert "not following" in empty


async def test_deep_link_subscribes(app: App, tg: FakeTelegram) -> None:
    (text,) = await ask(tg, f"/start {BARCODE}")
    assert BARCODE in text
    async with app.session_factory() as session:
        assert await repo.is_subscribed(session, CHAT, BARCODE)


async def test_plain_message_with_several_barcodes(app: App, tg: FakeTelegram) -> None:
    texts = await ask(tg, f"{BARCODE}, zz000000000uz", replies=2)
    assert "Delivered" in texts[0]
    assert "ZZ000000000UZ" in texts[1] and "not found" in texts[1]
    first = tg.sent_messages(CHAT)[-2]
    buttons = [b["callback_data"] for row in first["reply_markup"]["inline_keyboard"] for b in row]
    assert f"p:sub:{BARCODE}" in buttons and f"p:trace:{BARCODE}" in buttons


async def test_photo_with_a_barcode_caption_is_looked_up(app: App, tg: FakeTelegram) -> None:
    def photo(caption: str | None) -> dict:
        update = tg.make_message(CHAT, caption or "")
        del update["message"]["text"]
        update["message"]["photo"] = [
            {"file_id": "label", "file_unique_id": "label", "width": 90, "height": 90}
        ]
        if caption is not None:
            update["message"]["caption"] = caption
        return update

    tg.push_update(photo(f"label of {BARCODE.lower()}"))
    (status,) = await tg.wait_for_messages(1, chat_id=CHAT)
    assert "Delivered" in status["text"] and status["reply_markup"]["inline_keyboard"]
    tg.push_update(photo(None))
    (_, bare) = await tg.wait_for_messages(2, chat_id=CHAT)
    assert "did not understand" in bare["text"]


async def test_buttons_subscribe_and_show_history(app: App, tg: FakeTelegram) -> None:
    await ask(tg, BARCODE)
    message_id = tg.calls_of("sendMessage")[-1].result["message_id"]
    tg.callback(CHAT, f"p:sub:{BARCODE}", message_id=message_id)
    for _ in range(100):
        if tg.calls_of("editMessageReplyMarkup"):
            break
        await asyncio.sleep(0.05)
    (edit,) = tg.calls_of("editMessageReplyMarkup")
    buttons = [
        b["callback_data"] for row in edit.params["reply_markup"]["inline_keyboard"] for b in row
    ]
    assert f"p:unsub:{BARCODE}" in buttons
    assert tg.calls_of("answerCallbackQuery")
    async with app.session_factory() as session:
        assert await repo.is_subscribed(session, CHAT, BARCODE)
    tg.callback(CHAT, f"p:trace:{BARCODE}", message_id=message_id)
    sent = await tg.wait_for_messages(2, chat_id=CHAT)
    assert "A*** K***" in sent[-1]["text"]


async def test_language_choice_is_stored_and_used(app: App, tg: FakeTelegram) -> None:
    await ask(tg, "/language")
    tg.callback(CHAT, "lang:uz")
    await tg.wait_for_messages(2, chat_id=CHAT)
    async with app.session_factory() as session:
        user = await repo.get_user(session, CHAT)
    assert user is not None and user.language == "uz"
    (help_uz,) = await ask(tg, "/help", language="en")
    (help_en,) = await ask(tg, "/help", chat=5005, language="en")
    assert help_uz != help_en


async def test_a_language_saved_is_not_followed_by_an_apology_when_telegram_fails_after(
    app: App, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    await ask(tg, "/language")
    tg.fail("editMessageText", status=502, description="Bad Gateway")
    tg.fail("setMyCommands", status=502, description="Bad Gateway")
    tg.callback(CHAT, "lang:uz")

    async def confirmed() -> bool:
        return bool(tg.calls_of("answerCallbackQuery"))

    await until(confirmed, 5, "the choice confirmed")
    await asyncio.sleep(0.5)  # an apology would have come by now
    assert len(tg.sent_messages(CHAT)) == 1  # the /language keyboard only
    async with app.session_factory() as session:
        user = await repo.get_user(session, CHAT)
    assert user is not None and user.language == "uz"
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "saved" in warning.getMessage() and warning.exc_info is None


async def test_admin_command_only_for_admins(app: App, tg: FakeTelegram) -> None:
    (stranger,) = await ask(tg, "/stats")
    (admin,) = await ask(tg, "/stats", chat=7, language="ru")
    assert "Подписки: 0" in admin  # in the admin's language
    assert "Подписки" not in stranger and "Subscriptions" not in stranger


async def test_other_content_gets_a_hint(app: App, tg: FakeTelegram) -> None:
    (text,) = await ask(tg, "/nonsense")
    assert "AB123456789UZ" in text


async def test_subscription_cap_is_polite(app: App, tg: FakeTelegram) -> None:
    async with app.session_factory() as session, session.begin():
        await repo.touch_user(session, CHAT, "en")
        for n in range(MAX_SUBSCRIPTIONS):
            await repo.subscribe(session, CHAT, f"CAP{n:06d}UZ")
    (text,) = await ask(tg, f"/subscribe {BARCODE}")
    assert str(MAX_SUBSCRIPTIONS) in text and "/list" in text
    (again,) = await ask(tg, "/subscribe CAP000001UZ")  # one already followed: still fine
    assert "already" in again
    async with app.session_factory() as session:
        assert await repo.count_subscriptions(session, CHAT) == MAX_SUBSCRIPTIONS
        assert not await repo.is_subscribed(session, CHAT, BARCODE)


async def test_slow_starex_does_not_block_other_users(
    app: App, tg: FakeTelegram, starex: FakeStarex
) -> None:
    starex.delay = 2.0
    tg.message(CHAT, f"/track {BARCODE}", language_code="en")
    await asyncio.sleep(0.2)  # the look-up is under way
    (help_reply,) = await ask(tg, "/help", chat=2002)
    assert "/track" in help_reply
    assert not tg.sent_messages(CHAT)  # the slow answer has not come yet...
    (trace,) = await tg.wait_for_messages(1, chat_id=CHAT, timeout=10)
    assert "A*** K***" in trace["text"]  # ...and then it does


def inactive(app: App, chat: int = CHAT) -> Callable[[], Awaitable[bool]]:
    """For until(): the person is stored and marked inactive (blocked the bot)."""

    async def check() -> bool:
        async with app.session_factory() as session:
            user = await repo.get_user(session, chat)
        return user is not None and not user.is_active

    return check


async def test_a_blocked_user_who_writes_again_is_reactivated(app: App, tg: FakeTelegram) -> None:
    async def post(state: int, statetime: str) -> None:
        body = {"barcode": BARCODE, "state": state, "statetime": statetime}
        async with web_client(app.settings) as web:
            assert (await web.post(webhook_path(app.settings), json=body)).status_code == 200

    await ask(tg, f"/subscribe {BARCODE}")
    tg.blocked(CHAT)
    await post(1, "2026-06-14 10:00:00")
    await until(inactive(app), 10, "the 403 marking the person inactive")
    tg.clear_faults()  # they unblock the bot and write
    await ask(tg, "/start")
    assert not await inactive(app)()
    await post(9, "2026-06-15 14:30:00")
    await tg.wait_for_messages(3, chat_id=CHAT, timeout=10)
    await asyncio.sleep(0.5)  # nothing more comes
    texts = [m["text"] for m in tg.sent_messages(CHAT)]
    notifications = [text for text in texts if "New status" in text]
    assert len(texts) == 3 and len(notifications) == 1  # not the change sent while blocked
    assert "Delivered" in notifications[0]


# --- Starex failing ------------------------------------------------------------------

UNAVAILABLE = {
    "en": "Starex is not answering right now",
    "ru": "Starex сейчас не отвечает",
}
ENVELOPE_422 = '{"success": false, "error": {"code": 422, "message": "Order not found"}}'
ENVELOPE_401 = '{"success": false, "error": {"code": 401, "message": "Unauthorized"}}'


@pytest.mark.parametrize(
    ("status", "body", "content_type", "logged", "level", "says"),
    [
        (401, ENVELOPE_401, "application/json", "401", logging.ERROR, "down"),
        (200, ENVELOPE_422, "application/json", "422", logging.INFO, "not found"),
        (422, ENVELOPE_422, "application/json", "422", logging.INFO, "not found"),
        (500, "<html><b>Internal error</b></html>", "text/html", "500", logging.WARNING, "down"),
        (502, "Bad Gateway", "text/plain", "502", logging.WARNING, "down"),
        (200, "", "application/json", "200", logging.WARNING, "down"),
        (200, "<html>maintenance</html>", "text/html", "200", logging.WARNING, "down"),
    ],
    ids=["401", "422-in-200", "422", "500-html", "502", "empty-200", "html-200"],
)
async def test_each_starex_failure_is_a_friendly_sentence_and_a_logged_status(
    app: App,
    tg: FakeTelegram,
    starex: FakeStarex,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: str,
    content_type: str,
    logged: str,
    level: int,
    says: str,
) -> None:
    caplog.set_level(logging.INFO)
    starex.fault, starex.fault_type = (status, body), content_type
    (en,) = await ask(tg, f"/track {BARCODE}")
    (ru,) = await ask(tg, f"/track {BARCODE}", chat=2002, language="ru")
    if says == "not found":
        assert "not found" in en and BARCODE in en
        assert "не найдена" in ru
    else:
        assert UNAVAILABLE["en"] in en and UNAVAILABLE["ru"] in ru
    for text in (en, ru):  # nothing of Starex's answer reaches the person
        assert "html" not in text and "Internal" not in text and "Gateway" not in text
    starex_records = [r for r in caplog.records if r.name == "bot.starex"]
    assert starex_records and all(logged in r.getMessage() for r in starex_records)
    # A typo'd barcode is the person's, not Starex failing: INFO; the rest WARNING or more.
    assert max(r.levelno for r in caplog.records if r.name.startswith("bot")) == level
    assert "Traceback" not in caplog.text
    errors = [
        sample.value
        for metric in app.metrics.registry.collect()
        if metric.name == "starex_api_errors"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["endpoint"] == "trace"
    ]
    assert sum(errors) >= 2  # both look-ups counted in /metrics


@pytest.fixture
async def impatient_app(tmp_path, tg: FakeTelegram, starex: FakeStarex) -> AsyncIterator[App]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    async with running(settings, starex_timeout=0.5) as app:
        yield app


async def test_a_starex_slower_than_the_timeout_is_a_friendly_sentence(
    impatient_app: App, tg: FakeTelegram, starex: FakeStarex, caplog: pytest.LogCaptureFixture
) -> None:
    starex.delay = 5.0
    tg.message(CHAT, f"/track {BARCODE}", language_code="en")
    (help_reply,) = await ask(tg, "/help", chat=2002)  # others are answered meanwhile
    assert "/track" in help_reply
    (late,) = await tg.wait_for_messages(1, chat_id=CHAT, timeout=5)
    assert UNAVAILABLE["en"] in late["text"]
    timeouts = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert timeouts and all(r.levelno == logging.WARNING for r in timeouts)


# --- limits and races ----------------------------------------------------------------


async def test_starex_look_ups_are_capped_per_person(
    app: App, tg: FakeTelegram, starex: FakeStarex
) -> None:
    per_message = 10
    for n in range(LOOKUPS_PER_MINUTE // per_message):
        codes = " ".join(f"LK{n:02d}{i:06d}UZ" for i in range(per_message))
        await ask(tg, codes, replies=per_message)
    asked = len(starex.requests)

    (track,) = await ask(tg, f"/track {BARCODE}")
    (plain,) = await ask(tg, BARCODE)
    (follow,) = await ask(tg, f"/subscribe {BARCODE}")
    for text in (track, plain):
        assert "wait a minute" in text
    assert "following" in follow and "wait a minute" in follow  # followed all the same
    (listing,) = await ask(tg, "/list")
    assert BARCODE in listing and "wait a minute" in listing
    assert len(starex.requests) == asked  # Starex was not asked again
    async with app.session_factory() as session:
        assert await repo.is_subscribed(session, CHAT, BARCODE)

    (other,) = await ask(tg, f"/track {BARCODE}", chat=2002)  # the cap is per person
    assert "A*** K***" in other


async def test_subscribe_twice_at_once_is_one_subscription_and_two_answers(
    db_url: str, tg: FakeTelegram, starex: FakeStarex, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(db_url, tg.base_url, starex.base_url)
    async with running(settings) as app:
        # Two updates in one getUpdates batch: aiogram handles them concurrently.
        tg.message(CHAT, f"/subscribe {BARCODE}", language_code="en")
        tg.message(CHAT, f"/subscribe {BARCODE}", language_code="en")
        replies = [m["text"] for m in await tg.wait_for_messages(2, chat_id=CHAT)]
        message_id = tg.calls_of("sendMessage")[-1].result["message_id"]
        tg.callback(2002, f"p:sub:{BARCODE}", message_id=message_id)
        tg.callback(2002, f"p:sub:{BARCODE}", message_id=message_id)
        for _ in range(100):
            if len(tg.calls_of("answerCallbackQuery")) == 2:
                break
            await asyncio.sleep(0.05)
        async with app.session_factory() as session:
            assert [s.barcode for s in await repo.list_subscriptions(session, CHAT)] == [BARCODE]
            assert [s.barcode for s in await repo.list_subscriptions(session, 2002)] == [BARCODE]
    assert all("following" in text for text in replies)
    assert all(c.ok and c.params.get("text") for c in tg.calls_of("answerCallbackQuery"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "IntegrityError" not in caplog.text


@pytest.mark.parametrize(
    ("language_code", "expected"),
    [("uz-Cyrl", "uz"), ("ru-RU", "ru"), ("en-GB", "en"), ("de", "ru"), ("", "ru"), (None, "ru")],
)
async def test_every_telegram_language_code_is_answered_in_a_language_of_ours(
    app: App, tg: FakeTelegram, language_code: str | None, expected: str
) -> None:
    # The greeting in each language, through the /language choice (not language_code).
    greetings = {}
    for chat, locale in enumerate(("ru", "uz", "en"), start=3000):
        async with app.session_factory() as session, session.begin():
            await repo.touch_user(session, chat, None)
            await repo.set_language(session, chat, locale)
        (greetings[locale],) = await ask(tg, "/start", chat=chat, language="xx")
    assert len(set(greetings.values())) == 3
    update = tg.make_message(CHAT, "/start", language_code=language_code or "")
    if language_code is None:
        del update["message"]["from"]["language_code"]
    tg.push_update(update)
    (reply,) = await tg.wait_for_messages(1, chat_id=CHAT)
    assert reply["text"] == greetings[expected]


async def test_a_look_up_under_way_at_shutdown_is_answered_from_what_is_stored(
    tmp_path, tg: FakeTelegram, starex: FakeStarex, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    async with running(settings):
        body = {"barcode": BARCODE, "state": 9, "statetime": "2026-06-15 14:30:00"}
        async with web_client(settings) as web:
            assert (await web.post(webhook_path(settings), json=body)).status_code == 200
        starex.delay = 60  # Starex hangs from now on
        tg.message(CHAT, f"/track {BARCODE}", language_code="en")

        async def asked() -> bool:
            return any("/order/trace" in path for path in starex.requests)

        await until(asked, 5, "the look-up under way")
    # Shut down: Telegram will not send that message again, so it must be answered now.
    (reply,) = tg.sent_messages(CHAT)
    assert "Delivered" in reply["text"] and "15.06.2026 14:30" in reply["text"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # ours, not Starex's


# --- hostile text --------------------------------------------------------------------

HOSTILE = "<<Gift>> & Co </b>"


async def test_hostile_starex_text_never_breaks_a_message(
    app: App, tg: FakeTelegram, starex: FakeStarex
) -> None:
    """Names, recipients and labels from outside, in a history long enough to be split:
    the fake Bot API refuses malformed HTML and texts over 4096 characters."""
    steps = [
        {
            "code": 55,  # not in the dictionary: Starex's own name is shown
            "name": f"{HOSTILE} #{n} " + "x" * 60,
            "advansed": None,
            "statetime": f"2026-06-{10 + n // 60:02d} {n // 60:02d}:{n % 60:02d}:00",
        }
        for n in range(150)
    ]
    starex.traces["HX123456789UZ"] = {
        "barcode": "HX123456789UZ",
        "date": None,
        "weight": None,
        "recipient": HOSTILE,
        "trace": steps,
    }
    tg.message(CHAT, "/track HX123456789UZ", language_code="en", first_name=HOSTILE)

    async def whole_history_sent() -> bool:
        return any("#149 " in m["text"] for m in tg.sent_messages(CHAT))

    await until(whole_history_sent, 10, "the last step of the history")
    calls = [c for c in tg.calls_of("sendMessage") if c.params["chat_id"] == CHAT]
    assert all(c.ok for c in calls), [c.description for c in calls if not c.ok]
    shown = "\n".join(c.result["text"] for c in calls)  # as a person sees it
    assert len(calls) >= 3 and all(len(c.result["text"]) <= 4096 for c in calls)
    positions = [shown.index(f"{HOSTILE} #{n} ") for n in range(150)]
    assert positions == sorted(positions)
    assert "Recipient: G*** C*** b***" in shown  # masked: initials are letters or digits

    # A status name from Starex's dictionary, pushed in a notification.
    starex.states.append({"code": 66, "name": HOSTILE, "advanced": None})
    await app.catalog.refresh()
    await ask(tg, f"/subscribe {BARCODE} {HOSTILE}", chat=2002)
    body = {"barcode": BARCODE, "state": 66, "statetime": "2026-06-16 10:00:00"}
    async with web_client(app.settings) as web:
        assert (await web.post(webhook_path(app.settings), json=body)).status_code == 200
    (_, pushed) = await tg.wait_for_messages(2, chat_id=2002)
    assert pushed["text"].count("&lt;&lt;Gift&gt;&gt; &amp; Co &lt;/b&gt;") == 2  # label, status


# --- found by a newcomer's trial ----------------------------------------------------------


async def test_start_in_capitals_is_understood(app: App, tg: FakeTelegram) -> None:
    (plain,) = await ask(tg, "/start")
    (shouted,) = await ask(tg, "/START")
    assert shouted == plain
    (deep,) = await ask(tg, f"/START {BARCODE}")
    assert "following" in deep
    async with app.session_factory() as session:
        assert await repo.is_subscribed(session, CHAT, BARCODE)


async def test_a_look_up_under_way_is_answered_before_shutdown(
    tmp_path, tg: FakeTelegram, starex: FakeStarex
) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    starex.delay = 2.0
    async with running(settings):
        tg.message(CHAT, f"/track {BARCODE}", language_code="en")
        for _ in range(100):  # "typing…": the handler is waiting for Starex
            if tg.calls_of("sendChatAction"):
                break
            await asyncio.sleep(0.05)
        assert not tg.sent_messages(CHAT)
    # Telegram was told the update arrived: it is answered now or never.
    (trace,) = tg.sent_messages(CHAT)
    assert "A*** K***" in trace["text"]


async def test_unsubscribing_drops_a_change_still_queued(app: App, tg: FakeTelegram) -> None:
    await ask(tg, f"/subscribe {BARCODE}")
    tg.fail("sendMessage", chat_id=CHAT, retry_after=2)  # the change must wait
    async with web_client(app.settings) as web:
        body = {"barcode": BARCODE, "state": 12, "statetime": "2026-06-16 10:00:00"}
        assert (await web.post(webhook_path(app.settings), json=body)).status_code == 200
    for _ in range(100):
        if tg.calls_of("sendMessage")[-1].status == 429:
            break
        await asyncio.sleep(0.05)
    (bye,) = await ask(tg, f"/unsubscribe {BARCODE}")
    assert "no longer" in bye
    await asyncio.sleep(3)  # past retry_after
    assert tg.sent_messages(CHAT)[-1]["text"] == bye
    assert await app.notifier.drain_once() == 0


async def test_the_apology_is_in_the_language_chosen(app: App, tg: FakeTelegram) -> None:
    async with app.session_factory() as session, session.begin():
        await repo.touch_user(session, CHAT, "en")
        await repo.set_language(session, CHAT, "uz")
    # The reply is refused (a reason of ours, not the chat's): the handler fails.
    tg.fail("sendMessage", chat_id=CHAT, status=400, description="Bad Request: odd", times=1)
    (apology,) = await ask(tg, "/help", language="en")
    assert apology == app.i18n.gettext(
        "Sorry, something went wrong. Please try again later.", locale="uz"
    )


async def test_a_reply_waits_out_retry_after_and_is_sent_once(
    app: App, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    tg.fail("sendMessage", chat_id=CHAT, status=429, retry_after=1, times=1)
    (text,) = await ask(tg, "/help")
    assert "/track" in text  # the answer itself, not an apology
    refused, sent = tg.calls_of("sendMessage")
    assert refused.status == 429 and sent.ok
    assert sent.at - refused.at >= 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# Telegram failing a call: 5xx, the connection dropped, a retry_after too long to wait.
telegram_faults = pytest.mark.parametrize(
    ("status", "retry_after"), [(502, None), (0, None), (429, 30)], ids=["5xx", "drop", "429"]
)


@telegram_faults
async def test_telegram_failing_a_reply_is_one_warning_then_an_apology(
    app: App,
    tg: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
    status: int,
    retry_after: int | None,
) -> None:
    # A retry_after past 10 s is not waited out: a person would be left waiting.
    tg.fail("sendMessage", chat_id=CHAT, status=status, retry_after=retry_after, times=1)
    (apology,) = await ask(tg, "/help")
    assert apology == app.i18n.gettext(
        "Sorry, something went wrong. Please try again later.", locale="en"
    )
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.levelname == "WARNING" and "Telegram failed" in warning.getMessage()
    assert warning.exc_info is None and "\n" not in warning.getMessage()  # one line


async def test_a_person_who_blocked_the_bot_mid_answer_is_marked_inactive(
    app: App, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    tg.blocked(CHAT)
    tg.message(CHAT, "/help", language_code="en")
    await until(inactive(app), 5, "the person marked inactive")
    assert len(tg.calls_of("sendMessage")) == 1  # no apology sent after the answer
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(502, None), (0, None), (429, 5), (429, 30)],
    ids=["5xx", "drop", "429-short", "429-long"],  # a short one the answer used to wait for
)
async def test_the_typing_indicator_failing_neither_delays_nor_logs(
    app: App,
    tg: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
    status: int,
    retry_after: int | None,
) -> None:
    tg.fail("sendChatAction", status=status, retry_after=retry_after, times=None)
    started = asyncio.get_running_loop().time()
    texts = await ask(tg, f"/track {BARCODE}")
    assert "Delivered" in texts[0]
    # Not held back by the indicator's retry_after (aiogram's ChatActionSender was).
    assert asyncio.get_running_loop().time() - started < 4
    await asyncio.sleep(0.1)
    gc.collect()  # where "Task exception was never retrieved" would be logged
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_keyboard_that_cannot_be_edited_after_subscribing_is_no_error(
    app: App, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    await ask(tg, BARCODE)
    message_id = tg.calls_of("sendMessage")[-1].result["message_id"]
    tg.fail(
        "editMessageReplyMarkup", status=400, description="Bad Request: message to edit not found"
    )
    tg.callback(CHAT, f"p:sub:{BARCODE}", message_id=message_id)
    for _ in range(100):
        if tg.calls_of("editMessageReplyMarkup"):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # an apology, if any, would have come by now
    (answer,) = tg.calls_of("answerCallbackQuery")
    assert "Subscribed" in answer.params["text"]
    assert len(tg.sent_messages(CHAT)) == 1  # the status only, no apology
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    async with app.session_factory() as session:
        assert await repo.is_subscribed(session, CHAT, BARCODE)


async def test_many_subscribes_at_once_stop_at_the_cap(
    db_url: str, tg: FakeTelegram, starex: FakeStarex
) -> None:
    settings = make_settings(db_url, tg.base_url, starex.base_url)
    async with running(settings) as app:
        async with app.session_factory() as session, session.begin():
            await repo.touch_user(session, CHAT, "en")
        for n in range(MAX_SUBSCRIPTIONS + 10):  # one getUpdates batch, handled concurrently
            tg.message(CHAT, f"/subscribe RACE{n:06d}UZ", language_code="en")
        await tg.wait_for_messages(MAX_SUBSCRIPTIONS + 10, chat_id=CHAT, timeout=30)
        async with app.session_factory() as session:
            assert await repo.count_subscriptions(session, CHAT) == MAX_SUBSCRIPTIONS
