"""The status dictionary: fetched from (fake) Starex over HTTP, cached in a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiogram.utils.i18n import I18n
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import repo
from bot.i18n import Translator
from bot.starex import StarexClient
from bot.states import StateCatalog, StateInfo
from bot.telegram.parcels import Parcels
from tests.fake_starex import LOGIN, PASSWORD, FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import make_settings, running, until, web_client

DOWN = (502, "<html>Bad Gateway</html>")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def starex() -> AsyncIterator[FakeStarex]:
    async with FakeStarex() as fake:
        yield fake


@pytest.fixture
async def client(starex: FakeStarex) -> AsyncIterator[StarexClient]:
    # One attempt per refresh, so every request the fake sees is one refresh.
    async with StarexClient(starex.base_url, LOGIN, PASSWORD, retries=0, timeout=2.0) as c:
        yield c


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def catalog(
    session_factory: async_sessionmaker[AsyncSession], client: StarexClient, clock: Clock
) -> StateCatalog:
    # keep_fresh(): retry at once while Starex is down, then wait a minute.
    return StateCatalog(session_factory, client, clock=clock, refresh_every=60, retry_every=0.05)


def state_requests(starex: FakeStarex) -> int:
    return sum(1 for path in starex.requests if path.endswith("/dictionaries/states"))


async def cached_codes(session_factory: async_sessionmaker[AsyncSession]) -> set[int]:
    async with session_factory() as session:
        return set(await repo.load_states(session))


async def start(catalog: StateCatalog) -> bool:
    """What the application does at start-up."""
    await catalog.load_cached()
    return await catalog.refresh()


async def test_fetched_and_cached_at_startup(
    catalog: StateCatalog, starex: FakeStarex, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    assert await start(catalog)
    assert catalog.fresh
    assert catalog.get(9) == StateInfo("Доставлен", "COMPLETE")
    assert len(catalog) == 5
    assert await cached_codes(session_factory) == {0, 1, 5, 9, 12}
    assert state_requests(starex) == 1


async def test_cached_copy_serves_when_starex_is_down(
    catalog: StateCatalog,
    starex: FakeStarex,
    client: StarexClient,
    session_factory: async_sessionmaker[AsyncSession],
    clock: Clock,
) -> None:
    assert await start(catalog)
    starex.fault = DOWN
    restarted = StateCatalog(session_factory, client, clock=clock)
    assert not await start(restarted)
    assert not restarted.fresh
    assert restarted.get(12) == StateInfo("Доставляется", "DELIVERY")
    assert await restarted.ensure(5) == StateInfo("В пути", "IN_TRANSIT")


async def test_without_cache_starts_empty_and_keep_fresh_fills_it(
    catalog: StateCatalog, starex: FakeStarex, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    starex.fault = DOWN
    assert not await start(catalog)
    assert len(catalog) == 0
    assert await catalog.ensure(9) is None  # no crash, no entry: callers say "status 9"

    task = asyncio.create_task(catalog.keep_fresh())
    try:

        async def tried_again() -> bool:
            return state_requests(starex) >= 2

        await until(tried_again, 5, "a second try at the dictionary")  # it keeps trying
        assert len(catalog) == 0
        starex.fault = None
        for _ in range(250):
            if catalog.fresh:
                break
            await asyncio.sleep(0.02)
        assert catalog.get(9) == StateInfo("Доставлен", "COMPLETE")
        assert await cached_codes(session_factory) == {0, 1, 5, 9, 12}
        # Fresh now: the next refresh waits for refresh_every, not retry_every.
        settled = state_requests(starex)
        await asyncio.sleep(0.3)
        assert state_requests(starex) == settled
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_unknown_code_refreshes_at_most_once_per_interval(
    catalog: StateCatalog, starex: FakeStarex, clock: Clock
) -> None:
    assert await start(catalog)
    assert state_requests(starex) == 1

    assert await catalog.ensure(9) == StateInfo("Доставлен", "COMPLETE")  # known: no request
    clock.now += 10
    # Starex added a status after our start-up fetch: that fetch does not hold this one back.
    starex.states.append({"code": 77, "name": "На таможне", "advanced": "CUSTOMS"})
    assert await catalog.ensure(77) == StateInfo("На таможне", "CUSTOMS")
    assert state_requests(starex) == 2

    clock.now += 10
    assert await catalog.ensure(78) is None  # the last unknown code asked 10 s ago: too soon
    assert state_requests(starex) == 2

    clock.now += 50  # 60 s after it
    # Several unknown codes at once (a burst of webhooks): one fetch for all.
    results = await asyncio.gather(*(catalog.ensure(code) for code in (78, 79, 80, 78)))
    assert results == [None] * 4
    assert state_requests(starex) == 3

    # Failed attempts count too: a Starex outage is not hammered once per webhook.
    starex.fault = DOWN
    clock.now += 60
    assert await catalog.ensure(81) is None
    for _ in range(5):
        clock.now += 5
        assert await catalog.ensure(81) is None
    assert state_requests(starex) == 4
    assert catalog.get(77) is not None  # a failure keeps what was known


async def test_codes_gone_from_starex_still_decode(
    catalog: StateCatalog,
    starex: FakeStarex,
    client: StarexClient,
    session_factory: async_sessionmaker[AsyncSession],
    clock: Clock,
) -> None:
    assert await start(catalog)
    starex.states = [
        {"code": 9, "name": "Вручен", "advanced": "COMPLETE"},
        {"code": 13, "name": "Возврат", "advanced": "RETURN"},
    ]
    assert await catalog.refresh()
    assert catalog.get(12) == StateInfo("Доставляется", "DELIVERY")  # gone, still decodes
    assert catalog.get(9) == StateInfo("Вручен", "COMPLETE")  # renamed: the new name wins
    assert catalog.get(13) == StateInfo("Возврат", "RETURN")

    restarted = StateCatalog(session_factory, client, clock=clock)
    await restarted.load_cached()  # and after a restart, from the database
    assert restarted.get(12) == StateInfo("Доставляется", "DELIVERY")
    assert restarted.get(9) == StateInfo("Вручен", "COMPLETE")
    assert len(restarted) == 6


@pytest.mark.parametrize(
    "states",
    [[], [{"name": "no code"}, {"code": "x"}]],
    ids=["empty", "malformed"],
)
async def test_an_empty_list_from_starex_is_not_fresh(
    catalog: StateCatalog, starex: FakeStarex, states: list[dict[str, object]]
) -> None:
    assert await start(catalog)
    starex.states = states
    catalog.fresh = False
    assert not await catalog.refresh()
    assert not catalog.fresh  # keep_fresh goes on retrying soon
    assert len(catalog) == 5


async def test_a_hanging_starex_is_given_up_on(
    session_factory: async_sessionmaker[AsyncSession], starex: FakeStarex
) -> None:
    starex.delay = 1.0
    async with StarexClient(starex.base_url, LOGIN, PASSWORD, timeout=5.0) as client:
        catalog = StateCatalog(session_factory, client, refresh_timeout=0.2)
        async with asyncio.timeout(0.8):
            assert not await start(catalog)
    assert not catalog.fresh


async def test_an_unexpected_error_does_not_escape(
    session_factory: async_sessionmaker[AsyncSession], starex: FakeStarex
) -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug, not an outage")

    transport = httpx.MockTransport(explode)
    async with StarexClient(starex.base_url, LOGIN, PASSWORD, transport=transport) as client:
        catalog = StateCatalog(session_factory, client)
        assert not await start(catalog)
        assert await catalog.ensure(9) is None


async def test_app_starts_while_starex_is_down(db_url: str) -> None:
    async with FakeTelegram() as tg, FakeStarex() as starex:
        starex.fault = DOWN
        settings = make_settings(db_url, tg.base_url, starex.base_url)
        retry_soon = {"retry_every": 0.2}
        async with (
            running(settings, catalog_options=retry_soon) as app,
            web_client(settings) as web,
        ):
            assert (await web.get("/healthz")).status_code == 200
            assert not app.catalog.fresh and len(app.catalog) == 0

            async def retried() -> bool:  # past the start-up fetch's own two attempts
                return state_requests(starex) >= 4

            await until(retried, 10, "the dictionary retried in the background")
            starex.fault = None  # Starex is back: the app's own retry finds it

            async def fresh() -> bool:
                return app.catalog.fresh

            await until(fresh, 10, "the dictionary fetched in the background")
            assert app.catalog.get(9) == StateInfo("Доставлен", "COMPLETE")


# --- naming the steps of a /track history ----------------------------------------------


@pytest.fixture
def parcels(
    session_factory: async_sessionmaker[AsyncSession], client: StarexClient, catalog: StateCatalog
) -> Iterator[Parcels]:
    i18n = Translator()
    token = I18n.set_current(i18n)  # what the user middleware does for a message
    with i18n.use_locale("en"):
        yield Parcels(client, catalog, i18n, session_factory, ZoneInfo("Asia/Tashkent"))
    I18n.reset_current(token)


async def test_a_trace_step_of_an_unknown_code_refreshes_the_dictionary(
    parcels: Parcels, catalog: StateCatalog, starex: FakeStarex, clock: Clock
) -> None:
    await start(catalog)
    starex.add_trace("AB123456789UZ", [(1, "2026-06-10 09:00:00"), (44, "2026-06-11 10:00:00")])
    starex.states.append({"code": 44, "name": "На сортировке", "advanced": "AT_SORTING_CENTER"})
    clock.now += 61  # past the once-a-minute limit
    before = state_requests(starex)
    history = "\n".join(await parcels.history("AB123456789UZ", "en"))
    assert state_requests(starex) == before + 1
    named = parcels.i18n.status_name(
        44, locale="en", name="На сортировке", advanced="AT_SORTING_CENTER"
    )
    assert named != "status 44" and named in history


async def test_the_stored_history_while_starex_is_down_asks_starex_no_more(
    parcels: Parcels,
    catalog: StateCatalog,
    session_factory: async_sessionmaker[AsyncSession],
    starex: FakeStarex,
    clock: Clock,
) -> None:
    await start(catalog)
    async with session_factory() as session, session.begin():
        await repo.record_event(session, "AB123456789UZ", 44, datetime(2026, 6, 11, 5))
    starex.fault = DOWN
    clock.now += 61  # a refresh would be allowed: it must not be tried, Starex just failed
    before = len(starex.requests)
    history = "\n".join(await parcels.history("AB123456789UZ", "en"))
    assert len(starex.requests) == before + 1  # the trace, and no dictionary refresh
    assert "status 44" in history and "11.06.2026 10:00" in history
