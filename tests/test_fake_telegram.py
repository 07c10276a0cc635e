"""Tests for the fake Telegram server, driven by a real aiogram Bot over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot, html
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update

from tests.fake_telegram import FakeTelegram, parse_html

TOKEN = "42:TEST-token"


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    bot = Bot(TOKEN, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
    async with bot.context():  # closes the aiohttp ClientSession
        yield bot


async def test_get_me(bot: Bot, tg: FakeTelegram) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.first_name) == (42, "starex_test_bot", "Starex")
    assert tg.tokens == {TOKEN}
    assert [c.method for c in tg.calls] == ["getMe"]


async def test_send_message_recorded(bot: Bot, tg: FakeTelegram) -> None:
    kb = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="A", callback_data="a")]])
    first = await bot.send_message(100, "<b>Hello</b>", reply_markup=kb)
    second = await bot.send_message(100, "again")
    await bot.send_message(200, "other chat")
    assert (first.message_id, second.message_id, first.chat.id, first.text) == (1, 2, 100, "Hello")
    assert first.from_user is not None and first.from_user.id == 42
    msgs = tg.sent_messages(100)
    assert [m["text"] for m in msgs] == ["<b>Hello</b>", "again"]
    assert msgs[0]["chat_id"] == 100 and msgs[0]["parse_mode"] == "HTML"
    assert msgs[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "a"
    assert len(tg.sent_messages()) == 3


async def test_html_validation(bot: Bot, tg: FakeTelegram) -> None:
    raw = "<<Gift>> & Co </b>"
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(1, raw)
    msg = await bot.send_message(1, html.quote(raw))
    assert msg.text == raw
    assert tg.sent_messages(1) == [tg.calls[-1].params]
    assert tg.calls[0].status == 400 and not tg.calls[0].ok


@pytest.mark.parametrize(
    "text",
    [
        "<gift>x</gift>",
        "<b>x",
        "<b><i>x</b></i>",
        "a < b",
        "AT&T",
        "&nbsp;",
        '<span class="x">s</span>',
    ],
)
def test_parse_html_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_html(text)


def test_parse_html_accepts() -> None:
    text = (
        '<b>b</b><strong><i>i</i></strong><a href="https://x.y?a=1&amp;b=2">l</a>'
        '<pre><code class="language-py">x &lt; 1</code></pre><tg-spoiler>s</tg-spoiler>'
        '<span class="tg-spoiler">s</span><blockquote expandable>q</blockquote>'
        '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji> a > b &#33;&#x41;&quot;'
    )
    assert parse_html(text).endswith('👍 a > b !A"')


async def test_too_long_and_empty(bot: Bot, tg: FakeTelegram) -> None:
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(1, "<b> </b>")
    await bot.send_message(1, "<b>" + "x" * 4096 + "</b>")  # tags don't count
    assert len(tg.sent_messages()) == 1


async def test_retry_after_then_success(bot: Bot, tg: FakeTelegram) -> None:
    tg.fail("sendMessage", chat_id=7, status=429, retry_after=3)
    with pytest.raises(TelegramRetryAfter) as exc:
        await bot.send_message(7, "hi")
    assert exc.value.retry_after == 3
    await bot.send_message(7, "hi")
    assert [c.status for c in tg.calls_of("sendMessage")] == [429, 200]
    assert [m["text"] for m in tg.sent_messages(7)] == ["hi"]
    assert tg.sent_calls(7)[0].at <= time.monotonic()


async def test_faults_scoped_consumed_in_order(bot: Bot, tg: FakeTelegram) -> None:
    tg.fail(chat_id=1, status=500, times=None)
    tg.fail(status=502, times=1)
    with pytest.raises(TelegramServerError):  # 502 is global, consumed by chat 2
        await bot.send_message(2, "x")
    await bot.send_message(2, "x")
    for _ in range(2):
        with pytest.raises(TelegramServerError, match="Internal Server Error"):
            await bot.send_message(1, "x")
    await bot.get_me()  # method-scoped faults don't touch other methods
    tg.clear_faults()
    await bot.send_message(1, "x")
    assert [c.status for c in tg.calls] == [502, 200, 500, 500, 200, 200]
    assert [m["chat_id"] for m in tg.sent_messages()] == [2, 1]


async def test_blocked_and_chat_not_found(bot: Bot, tg: FakeTelegram) -> None:
    tg.blocked(5)
    tg.chat_not_found(6)
    for _ in range(2):
        with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
            await bot.send_message(5, "x")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_chat_action(6, "typing")
    assert tg.sent_messages() == []


async def test_strict_chats(bot: Bot, tg: FakeTelegram) -> None:
    tg.strict_chats = True
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(9, "x")
    tg.message(9, "hi")
    await bot.send_message(9, "x")


async def test_dropped_connection(bot: Bot, tg: FakeTelegram) -> None:
    tg.drop_connections(1)
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(1, "x")
    await bot.send_message(1, "x")
    assert [c.status for c in tg.calls] == [0, 200]


async def test_get_updates_long_poll_and_offset(bot: Bot, tg: FakeTelegram) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == []
    assert time.monotonic() - started >= 0.9

    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.05)
    pushed = tg.message(100, "/start deep", language_code="ru")
    updates = await asyncio.wait_for(poll, 2)
    assert [u.update_id for u in updates] == [pushed["update_id"]]
    msg = updates[0].message
    assert msg is not None and msg.text == "/start deep" and msg.from_user is not None
    assert msg.from_user.language_code == "ru"
    assert msg.entities is not None and msg.entities[0].type == "bot_command"
    assert msg.entities[0].length == len("/start")

    cb = tg.callback(100, "track:1", message_id=3)
    again = await bot.get_updates(timeout=0)  # unconfirmed -> redelivered
    assert [u.update_id for u in again] == [pushed["update_id"], cb["update_id"]]
    rest = await bot.get_updates(offset=pushed["update_id"] + 1, timeout=0)
    assert [u.update_id for u in rest] == [cb["update_id"]]
    assert rest[0].callback_query is not None and rest[0].callback_query.data == "track:1"
    assert await bot.get_updates(offset=cb["update_id"] + 1, timeout=0) == []


async def test_stop_wakes_long_poll() -> None:
    tg = FakeTelegram()
    await tg.start()
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    async with Bot(TOKEN, session=session).context() as bot:
        poll = asyncio.create_task(bot.get_updates(timeout=30))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await tg.stop()
        assert await poll == []
        assert time.monotonic() - started < 2


async def test_edit_and_callbacks(bot: Bot, tg: FakeTelegram) -> None:
    kb = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="A", callback_data="a")]])
    sent = await bot.send_message(1, "v1", reply_markup=kb)
    edited = await bot.edit_message_text(
        "v2", chat_id=1, message_id=sent.message_id, reply_markup=kb
    )
    assert not isinstance(edited, bool) and edited.text == "v2" and edited.reply_markup is not None
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("v2", chat_id=1, message_id=sent.message_id, reply_markup=kb)
    await bot.edit_message_reply_markup(chat_id=1, message_id=sent.message_id)
    assert [m["text"] for m in tg.sent_messages(1)] == ["v1", "v2"]
    update = tg.make_update(1, data="a", message_id=sent.message_id)  # not queued
    query = Update.model_validate(update).callback_query
    assert query is not None and query.message is not None and query.message.text == "v2"
    assert await bot.answer_callback_query(query.id, text="ok") is True
    assert await bot.get_updates(timeout=0) == []
    bad = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="A", callback_data="x" * 65)]]
    )
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(1, "x", reply_markup=bad)


async def test_commands_webhook_and_generic(bot: Bot, tg: FakeTelegram) -> None:
    await bot.set_my_commands([BotCommand(command="start", description="Start")])
    await bot.set_my_commands(
        [BotCommand(command="start", description="Старт")], language_code="ru"
    )
    assert tg.commands["ru"] == [{"command": "start", "description": "Старт"}]
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert await bot.delete_my_commands(language_code="ru") is True
    assert await bot.get_my_commands(language_code="ru") == []
    await bot.set_webhook("https://example.org/hook", secret_token="s3cret")
    assert (await bot.get_webhook_info()).url == "https://example.org/hook"
    tg.message(1, "pending")
    await bot.delete_webhook(drop_pending_updates=True)
    assert (await bot.get_webhook_info()).url == ""
    assert await bot.get_updates(timeout=0) == []
    assert await bot.set_my_description("desc") is True  # generic method
    assert tg.calls_of("setMyDescription")[0].params == {"description": "desc"}


async def test_wait_for_messages(bot: Bot, tg: FakeTelegram) -> None:
    async def later() -> None:
        await asyncio.sleep(0.05)
        await bot.send_message(3, "one")
        await bot.send_message(3, "two")

    task = asyncio.create_task(later())
    msgs = await tg.wait_for_messages(2, chat_id=3)
    await task
    assert [m["text"] for m in msgs] == ["one", "two"]
    with pytest.raises(AssertionError, match=r"expected 3 sent messages.*\['one', 'two'\]"):
        await tg.wait_for_messages(3, timeout=0.1)
