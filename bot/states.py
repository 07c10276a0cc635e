"""The Starex status dictionary: cached in the database, refreshed from Starex.

Starex's list changes over time (new codes appear), so it is fetched at start-up,
refreshed periodically, and refreshed on an unknown code at most once a minute.
When Starex is down the cached copy serves and a background task keeps trying.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.i18n import Translator
from bot.starex import StarexAuthError, StarexClient, StarexError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateInfo:
    name: str | None
    advanced: str | None


class StateCatalog:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        starex: StarexClient,
        *,
        min_refresh_interval: float = 60.0,
        refresh_timeout: float = 12.0,
        refresh_every: float = 3600.0,
        retry_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session_factory = session_factory
        self._starex = starex
        self._min_interval = min_refresh_interval
        # The client retries a hanging Starex for half a minute; start-up, notifications
        # and /track wait on a refresh, so it gives up sooner (and is retried later).
        self._timeout = refresh_timeout
        self._refresh_every = refresh_every
        self._retry_every = retry_every
        self._clock = clock
        self._states: dict[int, StateInfo] = {}
        self._last_on_unknown: float | None = None  # when ensure() last asked Starex
        self._lock = asyncio.Lock()
        self.fresh = False  # True once a fetch from Starex has succeeded

    def get(self, code: int) -> StateInfo | None:
        return self._states.get(code)

    def __len__(self) -> int:
        return len(self._states)

    async def load_cached(self) -> None:
        async with self._session_factory() as session:
            cached = await repo.load_states(session)
        loaded = {code: StateInfo(s.name, s.advanced) for code, s in cached.items()}
        self._states = {**loaded, **self._states}  # a fetch already made is fresher

    async def refresh(self) -> bool:
        """Fetch the dictionary from Starex and cache it; False when Starex failed."""
        async with self._lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                states = await self._starex.get_states()
        except TimeoutError:
            log.warning("status dictionary not refreshed: no answer in %.0f s", self._timeout)
            return False
        except StarexAuthError:
            log.error("Starex refused our credentials: check STAREX_LOGIN and STAREX_PASSWORD")
            return False
        except StarexError as exc:
            log.warning("status dictionary not refreshed: %s", exc)
            return False
        except Exception:
            # The dictionary only improves texts; no surprise in it may stop the bot.
            log.exception("status dictionary not refreshed: unexpected error")
            return False
        fetched = {s.code: StateInfo(s.name, s.advanced) for s in states}
        if not fetched:
            # An empty (or wholly malformed) list is a Starex glitch, not "no statuses":
            # keep what we have and keep retrying.
            log.warning("status dictionary not refreshed: Starex sent no usable states")
            return False
        try:
            async with self._session_factory() as session, session.begin():
                await repo.save_states(
                    session, [(code, i.name, i.advanced) for code, i in fetched.items()]
                )
        except SQLAlchemyError as exc:
            log.warning("status dictionary fetched but not cached: %s", type(exc).__name__)
        except Exception:
            # Names still serve from memory; the hourly refresh must go on.
            log.exception("status dictionary fetched but not cached: unexpected error")
        # Codes that vanished from Starex's list still decode old events.
        self._states = {**self._states, **fetched}
        self.fresh = True
        log.info("status dictionary refreshed: %d states", len(fetched))
        return True

    async def ensure(self, code: int) -> StateInfo | None:
        """The entry for `code`, refreshing first when it is unknown (at most once per
        `min_refresh_interval`, failed attempts included). Start-up and periodic fetches
        do not count: a code Starex added since then must still be fetched."""
        if code in self._states:
            return self._states[code]
        async with self._lock:
            recently = (
                self._last_on_unknown is not None
                and self._clock() - self._last_on_unknown < self._min_interval
            )
            if code not in self._states and not recently:
                self._last_on_unknown = self._clock()
                await self._refresh_locked()
        return self._states.get(code)

    async def status_name(
        self, code: int, i18n: Translator, locale: str, *, refresh: bool = True
    ) -> str:
        """`code` named for a person in `locale`; an unknown code refreshes first, unless
        `refresh` is off (Starex has just failed: a person is waiting)."""
        info = await self.ensure(code) if refresh else self.get(code)
        return i18n.status_name(
            code,
            locale=locale,
            name=info.name if info else None,
            advanced=info.advanced if info else None,
        )

    async def keep_fresh(self) -> None:
        """Background task: retry soon while Starex is unreachable, then refresh hourly."""
        while True:
            await asyncio.sleep(self._refresh_every if self.fresh else self._retry_every)
            await self.refresh()
