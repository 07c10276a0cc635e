"""The per-person cap on Starex look-ups: in memory, or in Redis shared by processes.

The Redis variants need TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0); they are
skipped without it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator

import pytest

from bot.telegram.parcels import LOOKUPS_PER_MINUTE, LookupCap
from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import free_port, make_settings, running

BARCODE = "AB123456789UZ"


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set; Redis variant not run")
    return url


def new_chat() -> int:
    # Keys outlive a test in a shared Redis: a chat id of its own isolates each run.
    return random.randrange(10**9, 2 * 10**9)


@pytest.fixture
async def caps(redis_url: str) -> AsyncIterator[tuple[LookupCap, LookupCap]]:
    """Two caps on one Redis: what two bot processes have."""
    first, second = LookupCap(redis_url), LookupCap(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_in_memory_cap_counts_per_person() -> None:
    cap, chat = LookupCap(), new_chat()
    assert await cap.hit(chat, LOOKUPS_PER_MINUTE - 1)
    assert await cap.hit(chat)
    assert not await cap.hit(chat)
    assert await cap.hit(chat + 1)  # someone else
    await cap.aclose()


async def test_redis_cap_is_shared_by_processes(caps: tuple[LookupCap, LookupCap]) -> None:
    first, second = caps
    chat = new_chat()
    assert await first.hit(chat, LOOKUPS_PER_MINUTE - 1)
    assert await second.hit(chat)
    assert not await first.hit(chat)
    assert not await second.hit(chat)
    assert await second.hit(chat + 1, LOOKUPS_PER_MINUTE)  # the cap is per person


async def test_unreachable_redis_lifts_the_cap_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap, chat = LookupCap(f"redis://127.0.0.1:{free_port()}/0"), new_chat()  # nobody there
    with caplog.at_level(logging.INFO):
        for _ in range(LOOKUPS_PER_MINUTE + 5):
            assert await cap.hit(chat)
    await cap.aclose()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()
    assert warnings[0].exc_info is None


async def test_the_bot_honours_a_cap_reached_through_another_process(
    tmp_path, redis_url: str
) -> None:
    chat = new_chat()
    async with FakeTelegram() as tg, FakeStarex() as starex:
        starex.add_trace(BARCODE, [(1, "2026-06-10 09:00:00")])
        settings = make_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
            tg.base_url,
            starex.base_url,
            redis_url=redis_url,
        )
        async with running(settings):
            other_process = LookupCap(redis_url)
            assert await other_process.hit(chat, LOOKUPS_PER_MINUTE)
            await other_process.aclose()
            tg.message(chat, f"/track {BARCODE}", language_code="en")
            (reply,) = await tg.wait_for_messages(1, chat_id=chat)
            traces_asked = [r for r in starex.requests if "trace" in r]
            tg.message(chat + 1, f"/track {BARCODE}", language_code="en")
            (other,) = await tg.wait_for_messages(1, chat_id=chat + 1)
    assert "wait a minute" in reply["text"]
    assert traces_asked == []  # Starex was not asked on behalf of the capped person
    assert BARCODE in other["text"] and "wait a minute" not in other["text"]
