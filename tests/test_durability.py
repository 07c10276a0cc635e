"""What must never be lost (SPEC.md): a webhook answered 200 and every notification it
queued survive kill -9 and SIGTERM of the real program (`python -m bot`, SQLite file) and
are delivered exactly once after a restart.

FakeTelegram and FakeStarex are served from a thread of their own (tests/test_cli.py's
`Fakes`), so the test's event loop can post webhooks while the fakes answer the bot.
Notifications are told apart by (chat, barcode, local minute) taken from their text.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx

from bench.soak import Key, key_of, local_minute
from bot.db import repo
from bot.db.engine import create_engine, create_session_factory, upgrade_database
from tests.fake_starex import LOGIN, PASSWORD
from tests.fake_telegram import FakeTelegram
from tests.harness import free_port, until
from tests.test_cli import SECRET, TOKEN, BotProcess, Fakes, assert_clean, environ

ZONE = ZoneInfo("Asia/Tashkent")  # STAREX_TIMEZONE's default: statetimes are local to it
START = datetime(2026, 6, 15, 8, 0)
QUIET = 1.5  # seconds without a new message before "nothing extra" is believed
# Longer than any back-off the program reaches in these tests, far shorter than the
# outbox lease (120 s): a pending row due later than this was left claimed.
LEASED = timedelta(seconds=60)

_T = TypeVar("_T")


# --- the world around the program ---------------------------------------------------------


class Subscribers:
    """Chat 1 follows every barcode, two chats of its own follow each; an inactive chat
    (it blocked the bot) follows the first one and must hear nothing."""

    INACTIVE = 999

    def __init__(self, barcodes: list[str]) -> None:
        self.barcodes = barcodes
        self.follows = {code: [1, 100 + 2 * n, 101 + 2 * n] for n, code in enumerate(barcodes)}
        self.chats = sorted({chat for chats in self.follows.values() for chat in chats})

    async def seed(self, url: str) -> None:
        await upgrade_database(url)
        engine = create_engine(url)
        try:
            async with create_session_factory(engine)() as session, session.begin():
                for n, chat in enumerate([*self.chats, self.INACTIVE]):
                    await repo.touch_user(session, chat, ("ru", "uz", "en")[n % 3])
                for code, chats in self.follows.items():
                    for chat in chats:
                        await repo.subscribe(session, chat, code)
                await repo.subscribe(session, self.INACTIVE, self.barcodes[0])
                await repo.deactivate_user(session, self.INACTIVE)
        finally:
            await engine.dispose()

    def expected(self, bodies: list[dict[str, Any]]) -> Counter[Key]:
        """One message per (subscriber, event); every body here is its barcode's newest."""
        return Counter(
            (chat, body["barcode"], local_minute(body["statetime"]))
            for body in bodies
            for chat in self.follows[body["barcode"]]
        )


def timeline(code: str, steps: int, offset: int) -> list[dict[str, Any]]:
    """A barcode's changes, oldest first, a distinct minute each."""
    return [
        {
            "barcode": code,
            "state": (1, 5, 12, 9)[step % 4],
            "statetime": f"{START + timedelta(minutes=offset + 3 * step):%Y-%m-%d %H:%M:%S}",
        }
        for step in range(steps)
    ]


def start_bot(cwd: Path, fakes: Fakes, db: Path) -> tuple[BotProcess, int]:
    port = free_port()
    bot = BotProcess(
        cwd,
        environ(
            BOT_TOKEN=TOKEN,
            TELEGRAM_API_URL=fakes.tg.base_url,
            STAREX_BASE_URL=fakes.starex.base_url,
            STAREX_LOGIN=LOGIN,
            STAREX_PASSWORD=PASSWORD,
            STAREX_WEBHOOK_SECRET=SECRET,
            DATABASE_URL=f"sqlite+aiosqlite:///{db}",
            HOST="127.0.0.1",
            PORT=str(port),
        ),
    )
    return bot, port


async def healthy(bot: BotProcess, port: int) -> None:
    await asyncio.to_thread(bot.wait_healthy, port)


async def on_fakes(fakes: Fakes, read: Callable[[], _T]) -> _T:
    """Run `read` on the fakes' loop: their state is only touched from there."""

    async def call() -> _T:
        return read()

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), fakes.loop))


def delivered(tg: FakeTelegram) -> Counter[Key]:
    keys: Counter[Key] = Counter()
    for call in tg.sent_calls():
        key = key_of(call.params["chat_id"], call.params.get("text", ""))
        assert key is not None, f"not a notification: {call.params}"
        keys[key] += 1
    return keys


async def all_delivered_exactly_once(fakes: Fakes, expected: Counter[Key], seconds: float) -> None:
    async def arrived() -> bool:
        got = await on_fakes(fakes, lambda: delivered(fakes.tg))
        return not (expected - got)

    try:
        await until(arrived, seconds, "all notifications delivered")
    finally:
        got = await on_fakes(fakes, lambda: delivered(fakes.tg))
        missing = expected - got
        assert not missing, f"{sum(missing.values())} never delivered, e.g. {list(missing)[:5]}"
    await asyncio.sleep(QUIET)  # a duplicate or a stray message would come now
    got = await on_fakes(fakes, lambda: delivered(fakes.tg))
    extra = got - expected
    assert not extra, f"{sum(extra.values())} extra (duplicates?), e.g. {list(extra)[:5]}"
    assert got == expected


# --- the database, read directly ------------------------------------------------------------


def utc(statetime: str) -> datetime:
    local = datetime.fromisoformat(statetime).replace(tzinfo=ZONE)
    return local.astimezone(UTC).replace(tzinfo=None)


def stored_events(db: Path) -> set[tuple[str, datetime]]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT barcode, statetime FROM events").fetchall()
    return {(barcode, datetime.fromisoformat(when)) for barcode, when in rows}


def outbox(db: Path) -> list[tuple[int, str, str, datetime, int]]:
    """(chat, barcode, status, next_attempt_at, attempts) for every queued notification."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT o.chat_id, e.barcode, o.status, o.next_attempt_at, o.attempts"
            " FROM outbox o JOIN events e ON e.id = o.event_id"
        ).fetchall()
    return [(c, b, s, datetime.fromisoformat(n), a) for c, b, s, n, a in rows]


def leased(db: Path) -> list[tuple[int, str, str, datetime, int]]:
    """Pending rows pushed out by a claim's lease rather than by a back-off."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return [row for row in outbox(db) if row[2] == "pending" and row[3] > now + LEASED]


# --- kill -9 ---------------------------------------------------------------------------------


async def test_kill_9_while_telegram_fails_loses_no_notification(tmp_path: Path) -> None:
    people = Subscribers([f"SK{n:08d}UZ" for n in range(1, 6)])
    timelines = {code: timeline(code, 4, n) for n, code in enumerate(people.barcodes)}
    expected = people.expected([body for steps in timelines.values() for body in steps])
    assert sum(expected.values()) == 60  # 20 events, 3 active subscribers each
    db = tmp_path / "db" / "bot.db"
    await people.seed(f"sqlite+aiosqlite:///{db}")

    with Fakes() as fakes:
        tg = fakes.tg

        def telegram_down() -> None:
            # Fast failures, not hangs: a send is never in flight for long, so the kill
            # below can find a moment when no row is claimed.
            for chat in people.chats:
                tg.fail("sendMessage", chat_id=chat, status=502 if chat % 2 else 0, times=None)

        await on_fakes(fakes, telegram_down)
        first, port = start_bot(tmp_path / "first", fakes, db)
        try:
            await healthy(first, port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:

                async def starex(steps: list[dict[str, Any]]) -> list[str]:
                    """One barcode's changes in order (barcodes side by side): none is stale."""
                    outcomes = []
                    for body in steps:
                        answer = await web.post(f"/starex/webhook/{SECRET}", json=body)
                        assert answer.status_code == 200, answer.text
                        outcomes.append(answer.json()["outcome"])
                    return outcomes

                answers = await asyncio.gather(*(starex(s) for s in timelines.values()))
            assert {outcome for outcomes in answers for outcome in outcomes} == {"stored"}

            def failed_chats() -> set[int]:
                return {c.params["chat_id"] for c in tg.calls_of("sendMessage") if not c.ok}

            async def every_chat_failed() -> bool:
                return await on_fakes(fakes, failed_chats) >= set(people.chats)

            await until(every_chat_failed, 20, "a failed send to every chat")

            def since_last_send() -> float:
                return time.monotonic() - tg.calls_of("sendMessage")[-1].at

            async def between_rounds() -> bool:
                # The last round of sends failed and was rescheduled (back-off >= 1 s):
                # no row is claimed now.
                return await on_fakes(fakes, since_last_send) >= 0.3

            await until(between_rounds, 20, "a pause between send rounds")
            first.kill()  # SIGKILL
            assert first.process.returncode == -signal.SIGKILL
        finally:
            first.kill()
        assert await on_fakes(fakes, lambda: tg.sent_calls()) == []

        # Every notification the 200s promised is on disk, waiting.
        rows = outbox(db)
        assert Counter((c, b) for c, b, *_ in rows) == Counter((c, b) for c, b, _ in expected)
        assert {status for _, _, status, _, _ in rows} == {"pending"}
        # A row claimed mid-send by the killed process would wait out its 120 s lease
        # (the pause above avoids that); otherwise rows are due within their back-off.
        latest = max(row[3] for row in rows) - datetime.now(UTC).replace(tzinfo=None)
        wait = 30 + max(latest.total_seconds(), 0)

        await on_fakes(fakes, tg.clear_faults)
        second, port = start_bot(tmp_path / "second", fakes, db)
        try:
            await healthy(second, port)
            await all_delivered_exactly_once(fakes, expected, wait)
            assert {row[2] for row in outbox(db)} == {"sent"}
            code, _ = await asyncio.to_thread(second.terminate)
        finally:
            second.kill()
        assert code == 0, second.output
        assert_clean(first.output + second.output)


# --- SIGTERM during a burst -------------------------------------------------------------------


async def test_sigterm_during_a_webhook_burst_loses_and_doubles_nothing(tmp_path: Path) -> None:
    people = Subscribers([f"SK{n:08d}UZ" for n in range(11, 21)])
    timelines = {code: timeline(code, 20, n) for n, code in enumerate(people.barcodes)}
    db = tmp_path / "db" / "bot.db"
    await people.seed(f"sqlite+aiosqlite:///{db}")

    with Fakes() as fakes:
        # A slow Telegram: sends are under way when the signal comes, and must finish
        # (recorded as sent) rather than be left claimed.
        await on_fakes(fakes, lambda: setattr(fakes.tg, "delay", 0.3))
        first, port = start_bot(tmp_path / "first", fakes, db)
        acked: list[tuple[dict[str, Any], str]] = []  # (body, outcome) answered 200
        refused: dict[str, dict[str, Any]] = {}  # barcode -> the body that got no 200
        started: list[float] = []  # when each post began
        try:
            await healthy(first, port)
            enough = asyncio.Event()

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:

                async def starex(code: str) -> None:
                    """Starex for one barcode: its changes in order, the next only after
                    a 200 (so every change acknowledged is its barcode's newest)."""
                    for body in timelines[code]:
                        started.append(time.monotonic())
                        try:
                            answer = await web.post(f"/starex/webhook/{SECRET}", json=body)
                        except httpx.TransportError:
                            refused[code] = body
                            return
                        if answer.status_code != 200:
                            refused[code] = body
                            return
                        acked.append((body, answer.json()["outcome"]))
                        if len(acked) >= 30:
                            enough.set()

                burst = asyncio.gather(*(starex(code) for code in people.barcodes))
                try:
                    await asyncio.wait_for(enough.wait(), 30)
                    signalled = time.monotonic()
                    code, took = await asyncio.to_thread(first.terminate)
                    await asyncio.wait_for(burst, 30)
                finally:
                    burst.cancel()
        finally:
            first.kill()
        assert code == 0, first.output
        assert took < 10, f"exited {took:.1f} s after SIGTERM"
        # The signal came mid-burst: posts went on after it, and some got no 200.
        assert any(moment > signalled for moment in started)
        assert refused, "every webhook was answered: the burst ended before the signal"
        assert {outcome for _, outcome in acked} == {"stored"}

        # Every change answered 200 is on disk, with its notifications; none left claimed.
        on_disk = stored_events(db)
        assert {(b["barcode"], utc(b["statetime"])) for b, _ in acked} <= on_disk
        assert not leased(db), "a row was left claimed by a graceful shutdown"
        rows = Counter((c, b) for c, b, *_ in outbox(db))
        for body, _ in acked:
            for chat in people.follows[body["barcode"]]:
                assert rows[(chat, body["barcode"])] > 0

        sent_at_exit = await on_fakes(fakes, lambda: len(fakes.tg.sent_calls()))
        with sqlite3.connect(db) as connection:
            recorded = connection.execute("SELECT count(*) FROM outbox WHERE status = 'sent'")
            assert recorded.fetchone()[0] == sent_at_exit  # every send under way was recorded
        await on_fakes(fakes, lambda: setattr(fakes.tg, "delay", 0.0))
        second, port = start_bot(tmp_path / "second", fakes, db)
        try:
            await healthy(second, port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:
                for body in refused.values():  # Starex retries what got no 200
                    answer = await web.post(f"/starex/webhook/{SECRET}", json=body)
                    assert answer.status_code == 200, answer.text
                    # "duplicate": it had been stored when the connection broke.
                    assert answer.json()["outcome"] in ("stored", "duplicate")
            expected = people.expected([b for b, _ in acked] + list(refused.values()))
            # 25 messages a second is the program's own limit.
            await all_delivered_exactly_once(fakes, expected, 30 + sum(expected.values()) / 20)
            assert {row[2] for row in outbox(db)} == {"sent"}
            code, _ = await asyncio.to_thread(second.terminate)
        finally:
            second.kill()
        assert code == 0, second.output
        assert_clean(first.output + second.output)
