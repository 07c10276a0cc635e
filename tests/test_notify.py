"""The outbox dispatcher (Notifier) on a real database, talking to the fake Bot API
through aiogram's real HTTP session and to the fake Starex through the real client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.db.models import STATUS_FAILED, STATUS_PENDING, STATUS_SENT, Notification, utcnow
from bot.i18n import Translator
from bot.metrics import Metrics
from bot.notify.dispatcher import Notifier
from bot.starex import StarexClient
from bot.states import StateCatalog
from tests.fake_starex import LOGIN, PASSWORD, FakeStarex
from tests.fake_telegram import Call, FakeTelegram
from tests.harness import TOKEN, until

BARCODE = "AB123456789UZ"
A, B, C = 101, 102, 103
# Stored times are naive UTC; Tashkent is UTC+5, so people read 14:30.
T = datetime(2026, 6, 15, 9, 30)
HOUR = timedelta(hours=1)
OUTBOX_READ = "notifications_outbox_read_timestamp_seconds"


class Clock:
    """The catalog's monotonic clock, moved by hand to step past its once-a-minute limit."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    tg: FakeTelegram
    starex: FakeStarex
    session_factory: async_sessionmaker[AsyncSession]
    catalog: StateCatalog
    clock: Clock
    bots: list[Bot] = field(default_factory=list)

    def notifier(
        self,
        *,
        api_url: str | None = None,
        metrics: Metrics | None = None,
        zone: str = "Asia/Tashkent",
        **options: object,
    ) -> Notifier:
        api = TelegramAPIServer.from_base(api_url or self.tg.base_url)
        bot = Bot(
            TOKEN,
            session=AiohttpSession(api=api),
            default=DefaultBotProperties(parse_mode=ParseMode.HTML),
        )
        self.bots.append(bot)
        return Notifier(
            bot,
            self.session_factory,
            i18n=Translator(default_locale="ru"),
            catalog=self.catalog,
            zone=ZoneInfo(zone),
            metrics=metrics or Metrics(),
            **{"poll_interval": 0.05, "base_backoff": 0.1, **options},  # type: ignore[arg-type]
        )


@pytest.fixture
async def env(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[Env]:
    async with FakeTelegram() as tg, FakeStarex() as starex:
        client = StarexClient(starex.base_url, LOGIN, PASSWORD, retries=0)
        clock = Clock()
        catalog = StateCatalog(session_factory, client, clock=clock)
        assert await catalog.refresh()
        env = Env(tg, starex, session_factory, catalog, clock)
        try:
            yield env
        finally:
            # Together: aiogram's close() sleeps 0.25 s for each session.
            await asyncio.gather(*(bot.session.close() for bot in env.bots))
            await client.aclose()


# --- helpers -------------------------------------------------------------------------


async def add_user(
    env: Env,
    chat_id: int,
    *,
    language: str | None = None,
    language_code: str | None = None,
    label: str | None = None,
) -> None:
    async with env.session_factory() as session, session.begin():
        await repo.touch_user(session, chat_id, language_code)
        if language is not None:
            await repo.set_language(session, chat_id, language)
        await repo.subscribe(session, chat_id, BARCODE, label)


async def add_event(env: Env, state: int, statetime: datetime) -> repo.RecordResult:
    async with env.session_factory() as session, session.begin():
        return await repo.record_event(session, BARCODE, state, statetime)


async def rows(env: Env, chat_id: int | None = None) -> list[Notification]:
    query = select(Notification).order_by(Notification.id)
    if chat_id is not None:
        query = query.where(Notification.chat_id == chat_id)
    async with env.session_factory() as session:
        return list(await session.scalars(query))


async def is_active(env: Env, chat_id: int) -> bool:
    async with env.session_factory() as session:
        user = await repo.get_user(session, chat_id)
    assert user is not None
    return user.is_active


def attempts(tg: FakeTelegram, chat_id: int) -> list[Call]:
    """Every sendMessage to the chat, answered or not."""
    return [c for c in tg.calls_of("sendMessage") if c.params.get("chat_id") == chat_id]


def texts(tg: FakeTelegram, chat_id: int) -> list[str]:
    return [m["text"] for m in tg.sent_messages(chat_id)]


@asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(notifier.run())
    try:
        yield task
    finally:
        notifier.stop()
        await asyncio.wait_for(task, 5)


# --- delivery ------------------------------------------------------------------------


async def test_one_message_per_subscriber_in_their_language(env: Env) -> None:
    await add_user(env, A, language="ru", language_code="en")  # the explicit choice wins
    await add_user(env, B, language_code="uz")
    await add_user(env, C, language_code="en-GB", label="<Gift> & Co")
    assert (await add_event(env, 9, T)).queued == 3
    notifier = env.notifier()

    assert await notifier.drain_once() == 3

    (ru,) = texts(env.tg, A)
    (uz,) = texts(env.tg, B)
    (en,) = texts(env.tg, C)
    assert "Доставлен" in ru and "Доставлена" not in ru  # Starex's own name, not ours
    assert "Новый статус" in ru
    assert "Yetkazib berildi" in uz and "Yangi holat" in uz
    assert "Delivered" in en and "New status" in en
    for text in (ru, uz, en):
        assert BARCODE in text
        assert "15.06.2026 14:30" in text and "09:30" not in text
    assert "&lt;Gift&gt; &amp; Co" in en  # escaped, and the fake's strict HTML accepted it
    assert all(r.status == STATUS_SENT and r.sent_at is not None for r in await rows(env))

    assert await notifier.drain_once() == 0
    assert len(env.tg.calls_of("sendMessage")) == 3


async def test_retry_after_delays_only_that_chat(env: Env) -> None:
    for chat in (A, B, C):
        await add_user(env, chat, language="en")
    await add_event(env, 1, T)
    env.tg.fail("sendMessage", chat_id=A, status=429, retry_after=3)
    # A long poll interval: the loop must wake by itself when A's wait is over.
    notifier = env.notifier(poll_interval=30)

    async with running(notifier):
        for chat in (B, C):
            await env.tg.wait_for_messages(1, chat_id=chat)
        # A change arriving while A waits: the others get it at once, A after its first.
        await add_event(env, 9, T + HOUR)
        notifier.wake()
        for chat in (B, C):
            await env.tg.wait_for_messages(2, chat_id=chat)
        assert len(attempts(env.tg, A)) == 1
        await env.tg.wait_for_messages(2, chat_id=A, timeout=6)

    first, retry, second = attempts(env.tg, A)
    assert first.status == 429 and retry.ok and second.ok
    assert 3.0 <= retry.at - first.at < 10  # not sooner, and not only at the next poll (30 s)
    registered, delivered = texts(env.tg, A)
    assert "Registered" in registered and "Delivered" in delivered
    for chat in (B, C):
        one, two = env.tg.sent_calls(chat)
        assert one.at - first.at < 2 and two.at < retry.at  # not behind A's 3 s wait
    assert await notifier.drain_once() == 0
    await asyncio.sleep(0.2)
    assert len(env.tg.sent_calls(A)) == 2
    # retry_after is Telegram's pacing, not the row's failure: no attempt is used up.
    assert [r.attempts for r in await rows(env, A)] == [1, 1]


async def test_order_kept_by_a_fresh_notifier_after_restart(env: Env) -> None:
    await add_user(env, A, language="ru")
    env.tg.fail("sendMessage", chat_id=A, status=502)
    await add_event(env, 1, T)
    # A backoff no loaded machine outlasts; the test ends the wait by hand below.
    assert await env.notifier(base_backoff=30).drain_once() == 0
    # The process restarts: a new Notifier knows nothing of the wait...
    await add_event(env, 5, T + HOUR)
    restarted = env.notifier(base_backoff=30)
    assert await restarted.drain_once() == 0  # ...the database makes the new change wait
    async with env.session_factory() as session, session.begin():
        await session.execute(update(Notification).values(next_attempt_at=utcnow()))
    assert await restarted.drain_once() == 2
    first, second = texts(env.tg, A)
    assert "Новый" in first and "В пути" in second


async def test_outage_is_retried_with_backoff_in_statetime_order(env: Env) -> None:
    await add_user(env, A, language="ru")
    env.tg.fail("sendMessage", chat_id=A, status=0)  # connection dropped, no answer
    env.tg.fail("sendMessage", chat_id=A, status=502)
    notifier = env.notifier(base_backoff=0.2)

    await add_event(env, 1, T)
    assert await notifier.drain_once() == 0
    # Changes that arrive while the chat waits must not overtake the first one.
    await add_event(env, 5, T + HOUR)
    assert await notifier.drain_once() == 0
    await add_event(env, 9, T + 2 * HOUR)
    assert await notifier.drain_once() == 0
    async with running(notifier):
        await env.tg.wait_for_messages(3, chat_id=A)

    calls = attempts(env.tg, A)
    assert [c.status for c in calls] == [0, 502, 200, 200, 200]
    assert calls[1].at - calls[0].at >= 0.2  # base_backoff
    assert calls[2].at - calls[1].at >= 0.4  # doubled
    first, second, third = texts(env.tg, A)
    assert "Новый" in first and "В пути" in second and "Доставлен" in third
    assert [r.status for r in await rows(env)] == [STATUS_SENT] * 3
    assert await notifier.drain_once() == 0
    assert len(env.tg.sent_calls(A)) == 3


async def test_blocked_and_missing_chats_are_deactivated_and_left_alone(env: Env) -> None:
    for chat in (A, B, C):
        await add_user(env, chat, language="en")
    env.tg.blocked(A)
    env.tg.chat_not_found(B)
    await add_event(env, 1, T)
    await add_event(env, 5, T + HOUR)
    metrics = Metrics()
    notifier = env.notifier(metrics=metrics)

    assert await notifier.drain_once() == 2
    assert len(env.tg.sent_calls(C)) == 2
    assert not await is_active(env, A) and not await is_active(env, B)
    sample = metrics.registry.get_sample_value
    assert sample("notifications_sent_total") == 2
    assert sample("notifications_failed_total", {"kind": "blocked"}) == 2
    assert await is_active(env, C)
    for chat in (A, B):
        assert len(attempts(env.tg, chat)) == 1
        assert [r.status for r in await rows(env, chat)] == [STATUS_FAILED] * 2
    assert "blocked" in (await rows(env, A))[0].last_error
    assert "chat not found" in (await rows(env, B))[0].last_error

    assert (await add_event(env, 9, T + 2 * HOUR)).queued == 1  # C only
    assert await notifier.drain_once() == 1
    assert await notifier.drain_once() == 0
    assert len(attempts(env.tg, A)) == 1 and len(attempts(env.tg, B)) == 1
    assert len(env.tg.sent_calls(C)) == 3


async def test_errors_on_our_side_are_retried_not_blamed_on_the_user(env: Env) -> None:
    # 401 (token revoked) and 404 (wrong Bot API URL) say nothing about the chat.
    await add_user(env, A, language="en")
    await add_user(env, B, language="en")
    await add_event(env, 9, T)
    env.tg.fail("sendMessage", chat_id=A, status=401)
    env.tg.fail("sendMessage", chat_id=B, status=404)
    notifier = env.notifier()

    async with running(notifier) as task:
        await env.tg.wait_for_messages(1, chat_id=A)
        await env.tg.wait_for_messages(1, chat_id=B)
        assert not task.done()

    assert await is_active(env, A) and await is_active(env, B)
    assert [c.status for c in attempts(env.tg, A)] == [401, 200]
    assert [c.status for c in attempts(env.tg, B)] == [404, 200]


async def test_undecodable_reply_is_retried(env: Env) -> None:
    """A proxy in front of the Bot API answering an HTML error page."""

    async def html_error(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    await add_user(env, A, language="en")
    await add_event(env, 9, T)
    proxy = web.Application()
    proxy.router.add_route("*", "/{tail:.*}", html_error)
    async with TestServer(proxy, host="127.0.0.1") as server:
        notifier = env.notifier(api_url=str(server.make_url("")).rstrip("/"), base_backoff=30)
        assert await notifier.drain_once() == 0

    (row,) = await rows(env)
    assert row.status == STATUS_PENDING and row.attempts == 1
    assert row.next_attempt_at > utcnow() + timedelta(seconds=20)  # backoff, not the lease
    assert row.last_error
    assert await is_active(env, A)


async def test_message_refused_for_its_content_fails_alone(env: Env) -> None:
    await add_user(env, A, language="en")
    await add_event(env, 1, T)
    await add_event(env, 9, T + HOUR)
    env.tg.fail("sendMessage", chat_id=A, status=400, description="Bad Request: can't parse")
    notifier = env.notifier()

    assert await notifier.drain_once() == 1  # the next change still goes, in the same round

    assert [r.status for r in await rows(env)] == [STATUS_FAILED, STATUS_SENT]
    assert "Delivered" in texts(env.tg, A)[0]
    assert await is_active(env, A)
    assert await notifier.drain_once() == 0
    assert len(attempts(env.tg, A)) == 2


async def test_a_row_that_cannot_be_rendered_fails_alone(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored before the webhook refused such times: 0001-01-01 UTC does not exist in
    # New York. Whatever breaks a row's text, it must not hold back the chat's later rows.
    await add_user(env, A, language="en")
    await add_event(env, 1, datetime(1, 1, 1))
    await add_event(env, 9, T)
    metrics = Metrics()
    notifier = env.notifier(zone="America/New_York", metrics=metrics)

    assert await notifier.drain_once() == 1

    assert [r.status for r in await rows(env)] == [STATUS_FAILED, STATUS_SENT]
    assert "Delivered" in texts(env.tg, A)[0]
    assert metrics.registry.get_sample_value("notifications_failed_total", {"kind": "render"})
    assert [r.levelname for r in caplog.records if "cannot be rendered" in r.message] == ["ERROR"]
    assert await notifier.drain_once() == 0
    assert len(attempts(env.tg, A)) == 1


# --- status names --------------------------------------------------------------------


async def test_unknown_state_refreshes_the_dictionary_else_says_status_n(env: Env) -> None:
    await add_user(env, A, language="ru")
    await add_user(env, B, language="uz")
    await add_user(env, C, language="en")
    notifier = env.notifier()
    states_requests = lambda: sum("states" in r for r in env.starex.requests)  # noqa: E731
    before = states_requests()

    env.starex.states.append({"code": 77, "name": "На таможне", "advanced": "CUSTOMS"})
    env.clock.now += 61  # past the once-a-minute limit
    await add_event(env, 77, T)
    assert await notifier.drain_once() == 3
    assert states_requests() == before + 1
    for chat in (A, B, C):  # no translation of CUSTOMS: Starex's name for everyone
        assert "На таможне" in texts(env.tg, chat)[-1]

    env.clock.now += 61
    await add_event(env, 88, T + HOUR)  # unknown to Starex too
    assert await notifier.drain_once() == 3
    assert states_requests() == before + 2
    assert "статус 88" in texts(env.tg, A)[-1]
    assert "holat 88" in texts(env.tg, B)[-1]
    assert "status 88" in texts(env.tg, C)[-1]

    env.clock.now += 61
    env.starex.fault = (500, "<html>down</html>")  # cannot even ask
    await add_event(env, 99, T + 2 * HOUR)
    assert await notifier.drain_once() == 3
    assert "status 99" in texts(env.tg, C)[-1]
    assert [r.status for r in await rows(env)] == [STATUS_SENT] * 9


# --- workers, rate, limits -----------------------------------------------------------


async def test_row_claimed_by_another_worker_is_not_sent(env: Env) -> None:
    await add_user(env, A, language="en")
    await add_event(env, 9, T)
    (row,) = await rows(env)
    async with env.session_factory() as session, session.begin():
        assert await repo.claim(session, row.id, utcnow(), 0.5)
    notifier = env.notifier()

    assert await notifier.drain_once() == 0
    assert attempts(env.tg, A) == []

    # The other worker died mid-send: once its lease has run out the row goes, once.
    await asyncio.sleep(0.6)
    assert await notifier.drain_once() == 1
    assert await notifier.drain_once() == 0
    assert len(env.tg.sent_calls(A)) == 1


async def test_two_workers_send_each_row_once(env: Env) -> None:
    chats = range(201, 207)
    for chat in chats:
        await add_user(env, chat, language="en")
    await add_event(env, 9, T)
    first, second = env.notifier(), env.notifier()

    sent = await asyncio.gather(first.drain_once(), second.drain_once())

    assert sum(sent) == len(chats)
    assert all(len(attempts(env.tg, chat)) == 1 for chat in chats)


async def test_global_rate_limit(env: Env) -> None:
    chats = range(301, 311)
    for chat in chats:
        await add_user(env, chat, language="en")
    await add_event(env, 9, T)
    notifier = env.notifier(rate_per_second=5)

    assert await notifier.drain_once() == 10

    times = sorted(c.at for c in env.tg.sent_calls())
    assert len(times) == 10
    assert times[-1] - times[0] >= 1.0
    # No burst either: never more than 5 messages within one second.
    assert min(times[i + 5] - times[i] for i in range(5)) >= 0.9


async def test_rows_claimed_but_not_yet_sent_are_handed_back_when_cut_off(env: Env) -> None:
    # What shutdown does once its grace is over: the round is cancelled while rows it
    # claimed still wait for the send rate. They must be due again at once (not after
    # the 120 s lease), with no attempt spent, and sent once by the next process.
    chats = range(301, 305)
    for chat in chats:
        await add_user(env, chat, language="en")
    await add_event(env, 9, T)
    notifier = env.notifier(rate_per_second=1, concurrency=4)
    task = asyncio.create_task(notifier.run())
    await env.tg.wait_for_messages(1)
    await asyncio.sleep(0.2)  # the other three are claimed, waiting for the rate
    notifier.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    waiting = [row for row in await rows(env) if row.status == STATUS_PENDING]
    assert len(waiting) == 4 - len(env.tg.sent_calls()) >= 2
    assert all(row.next_attempt_at <= utcnow() and row.attempts == 0 for row in waiting)

    assert await env.notifier().drain_once() == len(waiting)
    assert sorted(c.params["chat_id"] for c in env.tg.sent_calls()) == list(chats)


async def test_gives_up_after_max_attempts(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await add_user(env, A, language="en")
    await add_event(env, 9, T)
    env.tg.fail("sendMessage", chat_id=A, status=500, times=None)
    notifier = env.notifier(max_attempts=3, base_backoff=0.05)

    async def failed() -> bool:
        return (await rows(env))[0].status == STATUS_FAILED

    async with running(notifier):
        await until(failed, 5, "the row given up")
        await asyncio.sleep(0.3)  # room for a wrong fourth attempt

    assert len(attempts(env.tg, A)) == 3
    (row,) = await rows(env)
    assert row.attempts == 3 and row.last_error
    assert await is_active(env, A)  # Telegram's trouble, not the user's
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "bot.notify.dispatcher" and errors[0].exc_info is None
    assert "3 attempts" in errors[0].getMessage()
    assert "Traceback" not in caplog.text and TOKEN not in caplog.text


async def test_pending_gauge_counts_what_is_left_after_the_round(env: Env) -> None:
    for chat in (A, B):
        await add_user(env, chat, language="en")
    await add_event(env, 9, T)
    env.tg.fail("sendMessage", chat_id=B, status=500)
    metrics = Metrics()
    notifier = env.notifier(metrics=metrics)
    assert await notifier.drain_once() == 1
    assert metrics.registry.get_sample_value("notifications_pending") == 1  # B's, to retry


async def test_wake_sends_promptly_and_stop_ends_run(env: Env) -> None:
    await add_user(env, A, language="en")
    metrics = Metrics()
    notifier = env.notifier(poll_interval=30, metrics=metrics)
    task = asyncio.create_task(notifier.run())
    try:

        async def first_round_over() -> bool:
            return bool(metrics.registry.get_sample_value(OUTBOX_READ))

        # Only once the first round found nothing does the loop sleep; a row added
        # while that round still reads the outbox would rightly be sent unwoken.
        await until(first_round_over, 5, "the first round over the empty outbox")
        await add_event(env, 9, T)
        await asyncio.sleep(0.3)
        assert attempts(env.tg, A) == []  # nobody looks before being woken

        notifier.wake()
        await env.tg.wait_for_messages(1, chat_id=A, timeout=5)  # not the 30 s poll

        notifier.stop()
        await asyncio.wait_for(asyncio.shield(task), 2)  # not the 30 s poll either
    finally:
        notifier.stop()
        await asyncio.wait_for(task, 5)
