"""Outages of what the bot stands on, injected while the whole application runs: the
database server goes away and comes back, Telegram goes away and comes back. The bot
must answer what it cannot do honestly (503), log it in one line, and recover by
itself without a restart."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, make_url, select

from bot.app import App
from bot.db import repo
from bot.db.models import STATUS_SENT, Event, Notification
from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import make_settings, running, until, web_client
from tests.tcp_proxy import TcpProxy

BARCODE = "AB123456789UZ"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTelegram, FakeStarex]]:
    async with FakeTelegram() as tg, FakeStarex() as starex:
        yield tg, starex


def change(state: int, statetime: str, barcode: str = BARCODE) -> dict[str, object]:
    return {"barcode": barcode, "state": state, "statetime": statetime}


async def follow(app: App, barcode: str, *chats: int) -> None:
    async with app.session_factory() as session, session.begin():
        for chat in chats:
            await repo.touch_user(session, chat, "en")
            await repo.subscribe(session, chat, barcode)


def all_sent(app: App, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with app.session_factory() as session:
            statuses = list(await session.scalars(select(Notification.status)))
        return statuses == [STATUS_SENT] * n

    return check


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """An outage is an expected condition: one line each, never a traceback."""
    noisy = [r for r in caplog.records if r.exc_info or r.stack_info]
    assert not noisy, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in noisy]
    assert "Traceback" not in caplog.text


# --- the database ----------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_database_server_gone_then_back(
    db_url: str, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tg, starex = fakes
    real = make_url(db_url)
    async with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = make_settings(url, tg.base_url, starex.base_url)
        async with running(settings) as app, web_client(settings) as web:
            hook = settings.starex_webhook_path
            await follow(app, BARCODE, 1, 2)

            async def events() -> int:
                async with app.session_factory() as session:
                    return await session.scalar(select(func.count()).select_from(Event)) or 0

            async def waiting_row() -> bool:
                async with app.session_factory() as session:
                    row = await session.scalar(
                        select(Notification).where(Notification.chat_id == 2)
                    )
                return row is not None and row.attempts == 1 and row.last_error is not None

            # Chat 2's first try fails: its row waits (1 s back-off) through the outage.
            tg.fail("sendMessage", chat_id=2, status=502)
            first = await web.post(hook, json=change(1, "2026-06-15 09:00:00"))
            assert first.status_code == 200
            await tg.wait_for_messages(1, chat_id=1)
            await until(waiting_row, 5, "chat 2's row rescheduled")

            await proxy.unplug()
            refused = await web.post(hook, json=change(9, "2026-06-15 12:00:00"))
            assert refused.status_code == 503, refused.text
            assert (await web.get("/healthz")).status_code == 503
            # A person writing meanwhile is still answered (in Telegram's language).
            tg.message(3, "/help", language_code="en")
            (help_text,) = await tg.wait_for_messages(1, chat_id=3)
            assert "/track" in help_text["text"]
            # What needs the database is an apology for the person, one line for the log.
            tg.message(3, f"/subscribe {BARCODE}", language_code="en")
            _, sorry = await tg.wait_for_messages(2, chat_id=3)
            assert "something went wrong" in sorry["text"]
            seen = len(caplog.records)
            await asyncio.sleep(2)  # chat 2's retry comes due and finds no database
            assert (await web.get("/healthz")).status_code == 503
            # The dispatcher waits longer each time rather than spinning (0.5 + 1 s ...).
            retries = [r for r in caplog.records[seen:] if r.name == "bot.notify.dispatcher"]
            assert 1 <= len(retries) <= 3, [r.getMessage() for r in retries]

            await proxy.plug()
            # Each recovers on its first request: no dead connection is handed out.
            assert (await web.get("/healthz")).status_code == 200
            assert await events() == 1  # the 503 stored nothing
            # Nothing wakes the dispatcher: it finds chat 2's row by itself.
            await tg.wait_for_messages(1, chat_id=2, timeout=5)
            stored = await web.post(hook, json=change(9, "2026-06-15 12:00:00"))  # Starex retries
            assert stored.status_code == 200 and stored.json()["outcome"] == "stored"
            for chat in (1, 2):
                older, newer = await tg.wait_for_messages(2, chat_id=chat)
                assert "Registered" in older["text"] and "Delivered" in newer["text"]
            await until(all_sent(app, 4), 5, "every notification recorded as sent")
            assert len(tg.sent_messages(1)) == 2 and len(tg.sent_messages(2)) == 2

    assert_no_traceback(caplog)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_database_gone_during_a_send_the_message_is_recorded_not_repeated(
    db_url: str, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram accepts a message while the database is away: once back, the row is
    recorded as sent, not sent again when its lease runs out."""
    caplog.set_level(logging.INFO)
    tg, starex = fakes
    real = make_url(db_url)
    async with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = make_settings(url, tg.base_url, starex.base_url)
        # A short lease and poll, so a wrong second send would come within the test.
        options = {"lease_seconds": 1.0, "poll_interval": 0.5}
        async with running(settings, notifier_options=options) as app, web_client(settings) as web:
            await follow(app, BARCODE, 1)

            async def claimed() -> bool:
                async with app.session_factory() as session:
                    row = await session.scalar(select(Notification))
                return row is not None and row.attempts == 1

            tg.delay = 1.0  # Telegram answers the send a second after it arrives
            stored = await web.post(
                settings.starex_webhook_path, json=change(9, "2026-06-15 12:00:00")
            )
            assert stored.status_code == 200
            await until(claimed, 5, "the row claimed for sending")
            await proxy.unplug()  # the send is on its way to Telegram
            await tg.wait_for_messages(1, chat_id=1)
            await asyncio.sleep(0.5)  # recording it fails meanwhile
            await proxy.plug()
            await until(all_sent(app, 1), 5, "the notification recorded as sent")
            await asyncio.sleep(1.5)  # past the lease, and past a poll or two
            assert len(tg.calls_of("sendMessage")) == 1

    assert_no_traceback(caplog)


async def test_sqlite_locked_by_another_process_is_503_then_recovers(
    tmp_path: Path, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's equivalent of a database server gone: someone else (an operator's
    `sqlite3` shell mid-transaction, a backup) holds the write lock longer than the
    busy timeout (5 s)."""
    caplog.set_level(logging.INFO)
    tg, starex = fakes
    db = tmp_path / "bot.db"
    settings = make_settings(f"sqlite+aiosqlite:///{db}", tg.base_url, starex.base_url)
    async with running(settings) as app, web_client(settings) as web:
        hook = settings.starex_webhook_path
        await follow(app, BARCODE, 1)
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock, held
            started = time.monotonic()
            refused = await web.post(hook, json=change(9, "2026-06-15 12:00:00"), timeout=15)
            assert refused.status_code == 503, refused.text
            assert time.monotonic() - started < 7  # the busy timeout, not a hang
        finally:
            other.execute("ROLLBACK")
            other.close()
        stored = await web.post(hook, json=change(9, "2026-06-15 12:00:00"))
        assert stored.status_code == 200 and stored.json()["outcome"] == "stored"
        assert (await web.get("/healthz")).status_code == 200
        (message,) = await tg.wait_for_messages(1, chat_id=1)
        assert "Delivered" in message["text"]
        await until(all_sent(app, 1), 5, "the notification recorded as sent")

    assert_no_traceback(caplog)


# --- Telegram ----------------------------------------------------------------------------

OTHER = "CD987654321UZ"


async def test_telegram_down_for_ten_seconds_then_everything_delivered_once_in_order(
    tmp_path: Path, fakes: tuple[FakeTelegram, FakeStarex], caplog: pytest.LogCaptureFixture
) -> None:
    """Default back-off (1, 2, 4, 8 s): the outage is over before the fifth try."""
    caplog.set_level(logging.INFO)
    tg, starex = fakes
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tg.base_url, starex.base_url
    )
    async with running(settings) as app, web_client(settings) as web:
        hook = settings.starex_webhook_path
        await follow(app, BARCODE, 1, 2, 3)
        await follow(app, OTHER, 1)

        await tg.stop()  # connection refused from now on
        down = time.monotonic()
        changes = [
            change(1, "2026-06-15 09:00:00"),
            change(5, "2026-06-15 10:00:00"),
            change(12, "2026-06-15 11:00:00"),
            change(9, "2026-06-15 12:00:00"),
            # Arrives last but happened before two of the above: chat 1 gets it third.
            change(5, "2026-06-15 10:30:00", barcode=OTHER),
        ]
        for body in changes:
            answer = await web.post(hook, json=body)
            assert answer.status_code == 200 and answer.json()["outcome"] == "stored"

        async def every_chat_tried() -> bool:
            async with app.session_factory() as session:
                rows = list(await session.scalars(select(Notification)))
            tried = {row.chat_id for row in rows if row.attempts and row.last_error}
            return len(rows) == 13 and tried == {1, 2, 3}

        await until(every_chat_tried, 5, "a failed send to every chat")
        await asyncio.sleep(10 - (time.monotonic() - down))
        await tg.start()  # the same address

        expected = {
            1: ["09:00", "10:00", "10:30", "11:00", "12:00"],
            2: ["09:00", "10:00", "11:00", "12:00"],
            3: ["09:00", "10:00", "11:00", "12:00"],
        }
        for chat, times in expected.items():
            await tg.wait_for_messages(len(times), chat_id=chat, timeout=10)
        tg.message(4, "/help", language_code="en")  # polling is back too
        (reply,) = await tg.wait_for_messages(1, chat_id=4, timeout=8)
        assert "/track" in reply["text"]
        await until(all_sent(app, 13), 5, "every notification recorded as sent")

        for chat, times in expected.items():
            got = [m["text"] for m in tg.sent_messages(chat)]
            assert [t for text in got for t in times if f"15.06.2026 {t}" in text] == times
        assert OTHER in tg.sent_messages(1)[2]["text"]
        assert len(tg.calls_of("sendMessage")) == 14  # 13 notifications and the help

    assert_no_traceback(caplog)
