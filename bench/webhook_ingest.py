"""Webhook ingestion and delivery throughput, by hand:

    .venv/bin/python -m bench.webhook_ingest [--events 2000] [--subscribers 200] [--db URL]

Runs the whole application against the fake Telegram and fake Starex, posts events
over HTTP with some concurrency, and reports webhook latency, ingestion rate, the
time until every notification was delivered, and the process's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bot.db import repo
from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import make_settings, running


async def main(events: int, subscribers: int, barcodes: int, db_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = db_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        async with FakeTelegram() as tg, FakeStarex() as starex:
            settings = make_settings(url, tg.base_url, starex.base_url)
            options = {"notifier_options": {"rate_per_second": 1000.0}}
            async with running(settings, **options) as app:
                codes = [f"BN{i:09d}UZ" for i in range(barcodes)]
                async with app.session_factory() as session, session.begin():
                    for chat in range(1, subscribers + 1):
                        await repo.touch_user(session, chat, "en")
                        await repo.subscribe(session, chat, codes[chat % barcodes])
                followers = {
                    code: sum(1 for c in range(1, subscribers + 1) if c % barcodes == n)
                    for n, code in enumerate(codes)
                }
                expected = 0  # events that arrive after a newer one are stale: not pushed
                latencies: list[float] = []
                semaphore = asyncio.Semaphore(16)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as web:

                    async def post(i: int) -> None:
                        body = {
                            "barcode": codes[i % barcodes],
                            "state": 9,
                            "statetime": f"2026-06-15 {i // 3600 % 24:02d}:"
                            f"{i // 60 % 60:02d}:{i % 60:02d}",
                        }
                        async with semaphore:
                            started = time.perf_counter()
                            response = await web.post(settings.starex_webhook_path, json=body)
                            latencies.append(time.perf_counter() - started)
                            assert response.status_code == 200, response.text
                        nonlocal expected
                        if response.json()["outcome"] == "stored":
                            expected += followers[body["barcode"]]

                    started = time.perf_counter()
                    await asyncio.gather(*(post(i) for i in range(events)))
                    ingest = time.perf_counter() - started
                    await tg.wait_for_messages(expected, timeout=600)
                    delivered = time.perf_counter() - started
                latencies.sort()
                print(f"database            {url.split(':')[0]}")
                print(f"events              {events} over {barcodes} barcodes")
                print(
                    f"notifications       {expected} to {subscribers} subscribers "
                    "(stale events not pushed)"
                )
                print(f"ingest              {events / ingest:.0f} webhooks/s ({ingest:.2f} s)")
                print(
                    f"webhook latency     p50 {statistics.median(latencies) * 1000:.1f} ms, "
                    f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
                )
                print(f"all delivered after {delivered:.2f} s ({expected / delivered:.0f} msg/s)")
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"peak RSS            {peak:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--barcodes", type=int, default=100)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.subscribers, args.barcodes, args.db))
