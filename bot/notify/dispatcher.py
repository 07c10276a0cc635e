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
from datetime import timedelta
from zoneinfo import ZoneInfo

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
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

log = logging.getLogger(__name__)

GONE_MARKERS = ("chat not found", "user is deactivated", "bot was kicked", "peer_id_invalid")


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
        max_backoff: float = 300.0,
        batch_size: int = 200,
    ) -> None:
        self._bot = bot
        self._session_factory = session_factory
        self._i18n = i18n
        self._catalog = catalog
        self._zone = zone
        self._metrics = metrics
        # Telegram allows about 30 messages a second overall; stay below it.
        self._limiter = AsyncLimiter(rate_per_second, 1.0)
        self._concurrency = asyncio.Semaphore(concurrency)
        self._poll_interval = poll_interval
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Stop taking rows; sends already started finish (or their lease expires)."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                await self.drain_once()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("outbox not readable, will retry: %s", type(exc).__name__)
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)

    async def drain_once(self) -> int:
        """Send every row due now; returns how many were delivered."""
        async with self._session_factory() as session:
            due = await repo.due_notifications(session, utcnow(), self._batch_size)
            self._metrics.notifications_pending.set(await repo.count_pending(session))
        by_chat: dict[int, list[Notification]] = defaultdict(list)
        for row in due:
            by_chat[row.chat_id].append(row)
        results = await asyncio.gather(*(self._send_chat(rows) for rows in by_chat.values()))
        return sum(results)

    async def _send_chat(self, rows: list[Notification]) -> int:
        delivered = 0
        async with self._concurrency:
            for row in rows:
                if self._stopping.is_set():
                    break
                outcome = await self._send_one(row)
                if outcome != "sent":
                    break  # keep this chat's order: later rows wait for this one
                delivered += 1
        return delivered

    async def _send_one(self, row: Notification) -> str:
        async with self._session_factory() as session, session.begin():
            if not await repo.claim(session, row.id, utcnow(), self._lease.total_seconds()):
                return "taken"
        text = await self._render(row)
        await self._limiter.acquire()
        try:
            await self._bot.send_message(row.chat_id, text)
        except TelegramRetryAfter as exc:
            self._metrics.notifications_failed.labels("retry_after").inc()
            log.info("Telegram asks to wait %ss for chat %s", exc.retry_after, row.chat_id)
            return await self._retry(row, exc.retry_after, "retry_after", counts=False)
        except (TelegramForbiddenError, TelegramNotFound) as exc:
            return await self._gone(row, exc.message)
        except TelegramBadRequest as exc:
            if any(marker in exc.message.lower() for marker in GONE_MARKERS):
                return await self._gone(row, exc.message)
            self._metrics.notifications_failed.labels("bad_request").inc()
            log.error("notification %s refused by Telegram: %s", row.id, exc.message)
            await self._finish(row, error=exc.message)
            return "failed"
        except (TelegramNetworkError, TelegramServerError) as exc:
            self._metrics.notifications_failed.labels("network").inc()
            delay = min(2.0 ** min(row.attempts, 16), self._max_backoff)
            log.warning("notification %s not sent (%s), retry in %.0fs", row.id, exc, delay)
            return await self._retry(row, delay, type(exc).__name__, counts=True)
        await self._finish(row)
        self._metrics.notifications_sent.inc()
        return "sent"

    async def _render(self, row: Notification) -> str:
        event, user = row.event, row.user
        locale = self._i18n.choose_locale(user.language, user.language_code)
        info = await self._catalog.ensure(event.state)
        status = self._i18n.status_name(
            event.state,
            locale=locale,
            name=info.name if info else None,
            advanced=info.advanced if info else None,
        )
        return render_notification(
            self._i18n,
            locale,
            barcode=event.barcode,
            status=status,
            when=utc_to_local(event.statetime, self._zone),
            label=row.label,
        )

    async def _retry(self, row: Notification, delay: float, error: str, *, counts: bool) -> str:
        # row.attempts is the count before this claim; claim added one.
        if counts and row.attempts + 1 >= self._max_attempts:
            self._metrics.notifications_failed.labels("gave_up").inc()
            log.error("notification %s given up after %d attempts", row.id, row.attempts + 1)
            await self._finish(row, error=error)
            return "failed"
        when = utcnow() + timedelta(seconds=delay)
        async with self._session_factory() as session, session.begin():
            await repo.reschedule(session, row.id, when, error)
            await repo.postpone_chat(session, row.chat_id, when)
        return "retry"

    async def _gone(self, row: Notification, error: str) -> str:
        self._metrics.notifications_failed.labels("blocked").inc()
        log.info("chat %s unreachable (%s): marked inactive", row.chat_id, error)
        async with self._session_factory() as session, session.begin():
            await repo.deactivate_user(session, row.chat_id)
            await repo.fail_pending_for_chat(session, row.chat_id, error)
            await repo.mark_failed(session, row.id, error)
        return "gone"

    async def _finish(self, row: Notification, *, error: str | None = None) -> None:
        async with self._session_factory() as session, session.begin():
            if error is None:
                await repo.mark_sent(session, row.id, utcnow())
            else:
                await repo.mark_failed(session, row.id, error)
