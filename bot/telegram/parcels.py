"""Looking parcels up at Starex on a person's behalf, with friendly failures."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from aiogram.utils.i18n import gettext as _
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.db.models import Event
from bot.i18n import Translator
from bot.render import (
    esc,
    format_time,
    parcel_title,
    render_status_line,
    render_trace,
    split_blocks,
    utc_to_local,
)
from bot.starex import (
    StarexAuthError,
    StarexClient,
    StarexError,
    StarexNotFound,
    Trace,
    TraceStep,
)
from bot.states import StateCatalog

log = logging.getLogger(__name__)

# Starex is shared by everyone: one person (or a script) must not hammer it.
LOOKUPS_PER_MINUTE = 30
_LOOKUP_LIMIT = RateLimitItemPerMinute(LOOKUPS_PER_MINUTE)


class LookupCap:
    """At most LOOKUPS_PER_MINUTE Starex look-ups per person, in a moving window: in
    memory, or with REDIS_URL in Redis, shared by every process. While Redis is
    unreachable the cap is lifted rather than the bot silenced."""

    def __init__(self, redis_url: str | None = None) -> None:
        self._pool = None
        storage: Storage
        if redis_url is None:
            storage = MemoryStorage()
        else:
            import redis.asyncio  # the `redis` extra; Settings checked it is installed

            # Short timeouts: a person is waiting behind this check.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="starex-bot",
                connection_pool=self._pool,
            )
        self._limiter = MovingWindowRateLimiter(storage)
        self._storage_down = False

    async def hit(self, chat_id: int, count: int = 1) -> bool:
        """Counts `count` look-ups for the chat; False when over the cap (and then counts
        nothing). More than the whole cap at once (a long /list) costs the cap."""
        cost = min(count, LOOKUPS_PER_MINUTE)
        if cost <= 0:
            return True
        try:
            allowed = await self._limiter.hit(_LOOKUP_LIMIT, "lookup", str(chat_id), cost=cost)
        except StorageError as exc:
            if not self._storage_down:  # once an outage, not once a message
                log.warning(
                    "Redis unavailable (%s): Starex look-ups are not capped meanwhile",
                    type(exc.storage_error).__name__,
                )
            self._storage_down = True
            return True
        if self._storage_down:
            log.info("Redis is back: Starex look-ups are capped again")
            self._storage_down = False
        return allowed

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


@dataclass(frozen=True, slots=True)
class Failure:
    """Why there is no trace, as a sentence for the person."""

    text: str
    not_found: bool = False


@dataclass(slots=True)
class Parcels:
    starex: StarexClient
    catalog: StateCatalog
    i18n: Translator
    session_factory: async_sessionmaker[AsyncSession]
    zone: ZoneInfo
    cap: LookupCap = field(default_factory=LookupCap)

    async def may_look_up(self, chat_id: int, count: int = 1) -> bool:
        return await self.cap.hit(chat_id, count)

    def step_status(self, step: TraceStep, locale: str) -> str:
        known = self.catalog.get(step.code)
        return self.i18n.status_name(
            step.code,
            locale=locale,
            name=step.name or (known.name if known else None),
            advanced=step.advanced or (known.advanced if known else None),
        )

    async def trace(self, barcode: str) -> Trace | Failure:
        try:
            found = await self.starex.get_trace(barcode)
        except StarexNotFound:
            return Failure(
                _("Parcel {barcode} was not found at Starex. Please check the barcode.").format(
                    barcode=f"<b>{esc(barcode)}</b>"
                ),
                not_found=True,
            )
        except StarexAuthError:
            log.error("Starex refused our credentials: check STAREX_LOGIN and STAREX_PASSWORD")
        except StarexError as exc:
            # Cut off by shutdown: ours, not Starex failing.
            level = logging.INFO if exc.kind == "closed" else logging.WARNING
            log.log(level, "Starex look-up of %s failed: %s", barcode, exc)
        else:
            # Steps are named from the dictionary where Starex left them unnamed.
            for code in {step.code for step in found.steps}:
                await self.catalog.ensure(code)
            return found
        return Failure(_("Starex is not answering right now. Please try again in a few minutes."))

    async def history(self, barcode: str, locale: str) -> list[str]:
        """The full history from Starex; while Starex is down, the changes we stored."""
        found = await self.trace(barcode)
        if isinstance(found, Trace):
            return render_trace(
                self.i18n, locale, found, lambda step: self.step_status(step, locale)
            )
        if found.not_found:
            return [found.text]
        async with self.session_factory() as session:
            events = await repo.events_for(session, barcode)
        blocks = [parcel_title(barcode), f"<i>{found.text}</i>"]
        for event in events:
            name = await self.catalog.status_name(event.state, self.i18n, locale, refresh=False)
            when = format_time(utc_to_local(event.statetime, self.zone))
            blocks.append(f"{when} — <b>{esc(name)}</b>")
        return split_blocks(blocks)

    async def current(
        self, barcode: str, locale: str, label: str | None = None, *, missing: str | None = None
    ) -> str:
        """One parcel's current status; falls back to the last webhook we stored.
        `missing` replaces the "not found" sentence (a new subscription may precede
        the parcel's registration at Starex)."""
        found = await self.trace(barcode)
        if isinstance(found, Trace):
            step = found.steps[-1] if found.steps else None
            with_time = [s for s in found.steps if s.statetime is not None]
            if with_time:
                step = max(with_time, key=lambda s: s.statetime)
            return render_status_line(
                self.i18n,
                locale,
                barcode=barcode,
                status=self.step_status(step, locale) if step else None,
                when=step.statetime if step else None,
                label=label,
            )
        async with self.session_factory() as session:
            event = await repo.latest_event(session, barcode)
        if event is not None:
            status = await self.stored_status(barcode, event, locale, label, refresh=False)
            return status if found.not_found else f"{status}\n<i>{found.text}</i>"
        if found.not_found:
            return missing or found.text
        # Starex is down and nothing is stored: still say which parcel this is about.
        return f"{parcel_title(barcode, label)}\n<i>{found.text}</i>"

    async def stored_status(
        self, barcode: str, event: Event, locale: str, label: str | None, *, refresh: bool = True
    ) -> str:
        return render_status_line(
            self.i18n,
            locale,
            barcode=barcode,
            status=await self.catalog.status_name(event.state, self.i18n, locale, refresh=refresh),
            when=utc_to_local(event.statetime, self.zone),
            label=label,
        )
