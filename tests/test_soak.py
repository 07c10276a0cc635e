"""Soak: the whole application, thousands of webhooks over HTTP, Telegram failing at random.

Every webhook answered "stored" must reach each active subscriber of its barcode exactly
once, and nothing else may reach anyone: duplicates, stale events, inactive users, 429s,
5xx and dropped connections notwithstanding. bench/soak.py runs the same at larger sizes.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.soak import report, soak

# About 40 s on two cores: ~2,000 webhooks (a third of them duplicates or stale),
# ~2,600 notifications, ~10 % of sends failing.
EVENTS, SUBSCRIBERS, BARCODES, FAULT_RATE = 2000, 200, 100, 0.1
DEADLINE = 150.0  # seconds; the outbox must be empty by then


def sample(counter: object, n: int = 5) -> list[object]:
    return list(counter)[:n]  # type: ignore[call-overload]


async def test_every_stored_event_reaches_each_subscriber_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'soak.db'}"
    began = time.monotonic()
    result = await soak(
        url,
        events=EVENTS,
        subscribers=SUBSCRIBERS,
        barcodes=BARCODES,
        fault_rate=FAULT_RATE,
        seed=20260615,
        duplicate_rate=0.6,
        late_rate=0.3,
        deadline=DEADLINE,
    )
    took = time.monotonic() - began
    report(result, url)  # the figures, shown when the test fails (or with -s)

    # The workload did what it is meant to: every kind of answer, every kind of fault.
    assert result.not_ok == [], result.not_ok[:5]
    assert result.posted >= 0.9 * EVENTS
    assert {"stored", "duplicate", "stale"} <= set(result.outcomes), result.outcomes
    # ...and each outcome is borne out by what was posted, not taken on the app's word.
    assert result.misjudged == [], result.misjudged[:5]
    assert set(result.injected) == {"429", "500", "502", "drop"}, result.injected
    assert result.send_attempts > sum(result.delivered.values())  # some sends did fail
    assert sum(result.expected.values()) > 1000

    # The outbox drained, nothing given up on, and the fake saw exactly what was promised.
    assert (result.pending, result.failed) == (0, 0)
    assert result.unrecognised == [], result.unrecognised[:5]
    assert not result.extra, f"{sum(result.extra.values())} extra, e.g. {sample(result.extra)}"
    assert not result.missing, (
        f"{sum(result.missing.values())} missing, e.g. {sample(result.missing)}"
    )
    assert result.delivered == result.expected
    # A chat told to wait by a 429 was not tried again before retry_after ran out.
    assert result.early_retries == [], result.early_retries[:5]
    assert took < DEADLINE + 30
