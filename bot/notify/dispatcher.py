"""The outbox dispatcher: drains queued notifications and sends them with aiogram.

Each row is claimed with a lease before sending (so two workers never send it and
a send cut short by a crash is retried after the lease), then marked sent.
A chat's rows are sent in statetime order; when one must wait (retry_after,
network trouble) the chat's later rows wait with it, other chats carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
)
from aiolimiter import AsyncLimiter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.db.models import Notification, utcnow
from bot.i18n import Translator
from bot.metrics import Metrics
from bot.render import render_notification, utc_to_local
from bot.states import StateCatalog
from bot.telegram.failures import chat_gone, describe

log = logging.getLogger(__name__)

# First pause after the database failed; doubled each time, up to the poll interval.
DB_RETRY = 0.5


class Notifier:
    def __init__(
        self,
        bot: Bot,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        i18n: Translator,
        catalog: StateCatalog,
        zone: ZoneInfo,
        metrics: Metrics,
        rate_per_second: float = 25.0,
        concurrency: int = 8,
        poll_interval: float = 5.0,
        lease_seconds: float = 120.0,
        max_attempts: int = 30,
        base_backoff: float = 1.0,
        max_backoff: float = 300.0,
        batch_size: int = 200,
    ) -> None:
        self.bot = bot
        self._session_factory = session_factory
        self._i18n = i18n
        self._catalog = catalog
        self._zone = zone
        self._metrics = metrics
        # Telegram allows about 30 messages a second overall; stay below it. A bucket of
        # one spaces sends evenly: AsyncLimiter(rate, 1) would let `rate` go in a burst
        # and `rate` more within the same second.
        self._limiter = AsyncLimiter(1, 1.0 / rate_per_second)
        self._concurrency = asyncio.Semaphore(concurrency)
        self._poll_interval = poll_interval
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._batch_size = batch_size
        self._next_due: datetime | None = None  # earliest pending row, naive UTC
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Stop taking rows; sends already started finish (or their lease expires)."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        outage = 0  # rounds in a row the database failed
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                await self.drain_once()
                outage = 0
            except (SQLAlchemyError, OSError) as exc:
                outage += 1
                log.warning("outbox not readable, will retry: %s", type(exc).__name__)
            except Exception:
                # Whatever went wrong, the loop must go on: rows stay leased and return.
                log.exception("notification round failed, will retry")
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._idle_seconds(outage))

    def _idle_seconds(self, outage: int = 0) -> float:
        """Until the next poll, or sooner when a waiting row becomes due. While the
        database is down, a pause growing with each failed round instead: the row due
        time read before the outage is stale, and a past one would make the loop spin."""
        if outage:
            return min(self._poll_interval, DB_RETRY * 2.0 ** (outage - 1))
        if self._next_due is None:
            return self._poll_interval
        soonest = (self._next_due - utcnow()).total_seconds()
        # Not 0: rows due now that were not sent wait behind a row of their chat.
        return min(self._poll_interval, max(soonest, 0.05))

    async def drain_once(self) -> int:
        """Send every row due now; returns how many were delivered."""
        async with self._session_factory() as session:
            due = await repo.due_notifications(session, utcnow(), self._batch_size)
        by_chat: dict[int, list[Notification]] = defaultdict(list)
        for row in due:
            by_chat[row.chat_id].append(row)
        # Let every chat finish before returning (stop() waits for this round), then
        # report the first failure; the rows it left claimed come back after the lease.
        results = await asyncio.gather(
            *(self._send_chat(rows) for rows in by_chat.values()), return_exceptions=True
        )
        async with self._session_factory() as session:
            self._next_due = await repo.next_attempt_at(session)
            # After the round's sends, so the gauge does not lag one poll behind.
            self._metrics.notifications_pending.set(await repo.count_pending(session))
        self._metrics.outbox_read.set_to_current_time()
        delivered = 0
        for result in results:
            if isinstance(result, BaseException):
                raise result
            delivered += result
        return delivered

    async def _send_chat(self, rows: list[Notification]) -> int:
        delivered = 0
        async with self._concurrency:
            for row in rows:
                if self._stopping.is_set():
                    break
                outcome = await self._send_one(row)
                if outcome == "sent":
                    delivered += 1
                elif outcome != "failed":
                    # Waiting, gone, or in another worker's hands: later rows must not
                    # overtake it. (A row given up on no longer holds the chat.)
                    break
        return delivered

    async def _send_one(self, row: Notification) -> str:
        async with self._session_factory() as session, session.begin():
            if not await repo.claim(session, row.id, utcnow(), self._lease.total_seconds()):
                return "taken"
        try:
            text = await self._render(row)
            await self._limiter.acquire()
        except asyncio.CancelledError:
            # Shut down before the send began: hand the row back at once rather than
            # letting it wait out the lease. (Once sending, it must wait: Telegram may
            # have it, and nobody gets a change twice.)
            await asyncio.shield(self._release(row))
            raise
        except (SQLAlchemyError, OSError):
            raise  # the database: the round fails, the row comes back after its lease
        except Exception as exc:
            # Data no text can be made of, or a bug: trying again cannot help, and the
            # row would hold back every later change of its chat.
            log.exception("notification %s cannot be rendered: given up", row.id)
            self._metrics.notifications_failed.labels("render").inc()
            await self._finish(row, error=f"render: {type(exc).__name__}")
            return "failed"
        try:
            await self.bot.send_message(row.chat_id, text)
        except TelegramRetryAfter as exc:
            self._metrics.notifications_failed.labels("retry_after").inc()
            log.info("Telegram asks to wait %ss for chat %s", exc.retry_after, row.chat_id)
            return await self._retry(row, exc.retry_after, "retry_after", counts=False)
        except (TelegramForbiddenError, TelegramBadRequest) as exc:
            if chat_gone(exc):
                return await self._gone(row, exc.message)
            self._metrics.notifications_failed.labels("bad_request").inc()
            log.error("notification %s refused by Telegram: %s", row.id, exc.message)
            await self._finish(row, error=exc.message)
            return "failed"
        except (TelegramAPIError, ClientDecodeError) as exc:
            # Network trouble, 5xx, and errors about our side rather than the chat
            # (401 revoked token, 404 wrong Bot API URL, a proxy's HTML page): not the
            # user's doing, so never deactivate; retry with backoff up to max_attempts.
            kind = "network" if isinstance(exc, TelegramNetworkError) else "server"
            self._metrics.notifications_failed.labels(kind).inc()
            error = describe(exc)
            delay = min(self._base_backoff * 2.0 ** min(row.attempts, 16), self._max_backoff)
            log.warning("notification %s not sent (%s), retry in %.1fs", row.id, error, delay)
            return await self._retry(row, delay, error, counts=True)
        await self._record_sent(row)
        self._metrics.notifications_sent.inc()
        return "sent"

    async def _render(self, row: Notification) -> str:
        event, user = row.event, row.user
        locale = self._i18n.choose_locale(user.language, user.language_code)
        return render_notification(
            self._i18n,
            locale,
            barcode=event.barcode,
            status=await self._catalog.status_name(event.state, self._i18n, locale),
            when=utc_to_local(event.statetime, self._zone),
            label=row.label,
        )

    async def _retry(self, row: Notification, delay: float, error: str, *, counts: bool) -> str:
        # row.attempts is the count before this claim; claim added one.
        if counts and row.attempts + 1 >= self._max_attempts:
            self._metrics.notifications_failed.labels("gave_up").inc()
            log.error(
                "notification %s given up after %d attempts: %s", row.id, row.attempts + 1, error
            )
            await self._finish(row, error=error)
            return "failed"
        when = utcnow() + timedelta(seconds=delay)
        async with self._session_factory() as session, session.begin():
            await repo.reschedule(session, row.id, when, error, refund_attempt=not counts)
            await repo.postpone_chat(session, row.chat_id, when)
        return "retry"

    async def _release(self, row: Notification) -> None:
        async with self._session_factory() as session, session.begin():
            await repo.reschedule(session, row.id, utcnow(), row.last_error, refund_attempt=True)

    async def _gone(self, row: Notification, error: str) -> str:
        self._metrics.notifications_failed.labels("blocked").inc()
        log.info("chat %s unreachable (%s): marked inactive", row.chat_id, error)
        async with self._session_factory() as session, session.begin():
            await repo.give_up_on_chat(session, row.chat_id, error)  # this row included
        return "gone"

    async def _record_sent(self, row: Notification) -> None:
        """Telegram has the message: record that, waiting out a database outage, or the
        row would be sent again once its lease runs out."""
        delay = DB_RETRY
        while True:
            try:
                await self._finish(row)
                return
            except (SQLAlchemyError, OSError) as exc:
                log.warning(
                    "notification %s sent but not recorded yet (%s), retry in %.1fs",
                    row.id,
                    type(exc).__name__,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_interval)

    async def _finish(self, row: Notification, *, error: str | None = None) -> None:
        async with self._session_factory() as session, session.begin():
            if error is None:
                await repo.mark_sent(session, row.id, utcnow())
            else:
                await repo.mark_failed(session, row.id, error)
