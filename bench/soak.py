"""Soak: the whole application under a stream of webhooks while Telegram misbehaves.

    .venv/bin/python -m bench.soak [--events 20000] [--subscribers 2000] [--barcodes 500]
        [--fault-rate 0.1] [--duplicate-rate 0.25] [--late-rate 0.1] [--seed 1] [--db URL]

Runs the application in-process against the fake Telegram and fake Starex, seeds
subscribers with the repository functions, posts webhooks concurrently over HTTP
(duplicates and out-of-order ones among them) while a seeded share of sendMessage calls
fail (429 with retry_after=1, 5xx, dropped connections), waits until the outbox has no
pending row, and compares what the fake Telegram delivered with what the webhook answers
promised: one message per (active subscriber, event answered "stored"), nothing else.
tests/test_soak.py runs a small size of the same thing in CI. Exit status 1 when anything
was duplicated, lost or left in the outbox. (10,000 events, 1,000 subscribers, 500 barcodes
take about 5 minutes on two cores.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import resource
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bot.db import repo
from bot.db.models import STATUS_FAILED, Notification
from tests.fake_starex import FakeStarex
from tests.fake_telegram import FakeTelegram
from tests.harness import make_settings, running

# Notifier settings that let the dispatcher, not the rate limit or long back-offs, bound
# the run; retry_after is still honoured as Telegram gives it (1 s).
NOTIFIER_OPTIONS = {"rate_per_second": 1000.0, "base_backoff": 0.05, "max_backoff": 0.5}
STATES = (1, 5, 12, 9)  # known to the fake Starex: no dictionary refresh while rendering
LANGUAGES = ("ru", "uz", "en")
START = datetime(2026, 6, 15, 8, 0)
# What identifies a delivered notification: the barcode and the local minute in its text.
_BARCODE = re.compile(r"\bSK\d{8}UZ\b")
_TIME = re.compile(r"\b\d\d\.\d\d\.\d{4} \d\d:\d\d\b")

Key = tuple[int, str, str]  # (chat, barcode, "DD.MM.YYYY HH:MM")


@dataclass(frozen=True)
class Workload:
    follows: dict[str, list[int]]  # barcode -> subscribers, inactive ones included
    inactive: set[int]  # blocked the bot earlier: subscribed, but never notified
    languages: dict[int, str]
    bodies: list[dict[str, Any]]  # in posting order

    def notified(self, barcode: str) -> list[int]:
        return [chat for chat in self.follows[barcode] if chat not in self.inactive]


def plan(
    rng: random.Random,
    *,
    events: int,
    subscribers: int,
    barcodes: int,
    duplicate_rate: float = 0.25,
    late_rate: float = 0.1,
    inactive_rate: float = 0.05,
) -> Workload:
    """Who follows what, and the webhooks to post (about `events` of them).

    Each barcode has a timeline of distinct minutes. Posting order follows the timelines
    (interleaved at random) except that a `late_rate` share arrives later, most likely
    after a newer change of its barcode (stale), and a `duplicate_rate` share is posted
    again a little later (Starex retrying).
    """
    codes = [f"SK{n:08d}UZ" for n in range(barcodes)]
    follows: dict[str, list[int]] = {code: [] for code in codes}
    languages: dict[int, str] = {}
    inactive: set[int] = set()
    for chat in range(1, subscribers + 1):
        languages[chat] = rng.choice(LANGUAGES)
        if rng.random() < inactive_rate:
            inactive.add(chat)
        # Most follow one parcel, some a few; every barcode is followed by someone.
        count = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        picks = {codes[(chat - 1) % barcodes], *rng.sample(codes, count - 1)}
        for code in sorted(picks):
            follows[code].append(chat)

    distinct = max(barcodes, round(events / (1 + duplicate_rate)))
    timelines: dict[str, list[dict[str, Any]]] = {}
    for n, code in enumerate(codes):
        length = distinct // barcodes + (n < distinct % barcodes)
        moment = START + timedelta(minutes=rng.randrange(60))
        steps = []
        for step in range(length):
            moment += timedelta(minutes=rng.randint(1, 30))
            state = STATES[step % len(STATES)]
            steps.append(
                {"barcode": code, "state": state, "statetime": f"{moment:%Y-%m-%d %H:%M:%S}"}
            )
        timelines[code] = steps

    # Interleave the timelines at random, each in its own order; a barcode's next change
    # then comes about `barcodes` positions later, so a delay of 1-4 times that makes the
    # late one arrive after a newer one.
    turns = [code for code, steps in timelines.items() for _ in steps]
    rng.shuffle(turns)
    cursor = dict.fromkeys(codes, 0)
    placed: list[tuple[float, dict[str, Any]]] = []
    for position, code in enumerate(turns):
        body = timelines[code][cursor[code]]
        cursor[code] += 1
        delay = rng.randint(barcodes, 4 * barcodes) if rng.random() < late_rate else 0
        placed.append((position + delay + rng.random(), body))
        if rng.random() < duplicate_rate:
            placed.append((position + rng.randint(1, 2 * barcodes) + rng.random(), dict(body)))
    placed.sort(key=lambda item: item[0])
    return Workload(follows, inactive, languages, [body for _, body in placed])


def local_minute(statetime: str) -> str:
    return f"{datetime.fromisoformat(statetime):%d.%m.%Y %H:%M}"


def key_of(chat: int, text: str) -> Key | None:
    barcode, when = _BARCODE.search(text), _TIME.search(text)
    if barcode is None or when is None:
        return None
    return chat, barcode[0], when[0]


class RandomFaults:
    """Makes about `rate` of sendMessage calls fail, through FakeTelegram's public `fail`:
    it keeps queueing one-shot faults (any chat) in step with the calls made so far."""

    KINDS = ("429", "500", "502", "drop")

    def __init__(self, tg: FakeTelegram, rng: random.Random, rate: float) -> None:
        self._tg, self._rng, self._rate = tg, rng, rate
        self._seen = 0  # len(tg.calls) at the last top-up: O(1) to read
        self._owed = 0.0
        self.injected: Counter[str] = Counter()

    def top_up(self) -> None:
        calls = len(self._tg.calls)
        self._owed += (calls - self._seen) * self._rate
        self._seen = calls
        while self._owed >= 1:
            self._owed -= 1
            kind = self._rng.choice(self.KINDS)
            self.injected[kind] += 1
            if kind == "429":
                self._tg.fail("sendMessage", status=429, retry_after=1)
            elif kind == "drop":
                self._tg.fail("sendMessage", status=0)
            else:
                self._tg.fail("sendMessage", status=int(kind))

    async def run(self, every: float = 0.02) -> None:
        if self._rate <= 0:
            return
        self._tg.fail("sendMessage", status=502)  # at least one from the start
        self.injected["502"] += 1
        while True:
            self.top_up()
            await asyncio.sleep(every)


@dataclass
class SoakResult:
    posted: int
    outcomes: Counter[str]
    not_ok: list[tuple[int, str]]  # (status, body) of answers other than 200
    expected: Counter[Key]
    delivered: Counter[Key]
    unrecognised: list[str]  # successful sends that are not a notification
    pending: int  # outbox rows still pending when the run ended
    failed: int  # outbox rows given up on
    injected: Counter[str]
    send_attempts: int
    early_retries: list[tuple[int, float]]  # (chat, seconds) sent again before retry_after
    misjudged: list[str]  # answers no order of the posts in flight could explain
    ingest_seconds: float
    delivery_seconds: float  # from the first webhook until the outbox was empty
    latencies: list[float] = field(default_factory=list)

    @property
    def missing(self) -> Counter[Key]:
        return self.expected - self.delivered

    @property
    def extra(self) -> Counter[Key]:
        """Duplicates and messages nobody should have had."""
        return self.delivered - self.expected


async def _outbox_counts(app: Any) -> tuple[int, int]:
    async with app.session_factory() as session:
        pending = await repo.count_pending(session)
        failed = await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.status == STATUS_FAILED)
        )
    return pending, failed or 0


async def _drained(app: Any, every: float = 0.25) -> None:
    """Until no outbox row is pending: one COUNT per poll, cheap beside the app's work."""
    while True:
        pending, _ = await _outbox_counts(app)
        if not pending:
            return
        await asyncio.sleep(every)


async def soak(
    db_url: str,
    *,
    events: int,
    subscribers: int,
    barcodes: int,
    fault_rate: float,
    seed: int = 1,
    duplicate_rate: float = 0.25,
    late_rate: float = 0.1,
    concurrency: int = 32,
    deadline: float = 600.0,
    quiet: float = 1.0,
) -> SoakResult:
    """Run one soak; raises TimeoutError when the outbox is not empty by `deadline` s."""
    rng = random.Random(seed)
    work = plan(
        rng,
        events=events,
        subscribers=subscribers,
        barcodes=barcodes,
        duplicate_rate=duplicate_rate,
        late_rate=late_rate,
    )
    async with FakeTelegram() as tg, FakeStarex() as starex:
        settings = make_settings(db_url, tg.base_url, starex.base_url)
        async with running(settings, notifier_options=NOTIFIER_OPTIONS) as app:
            async with app.session_factory() as session, session.begin():
                for chat, language in work.languages.items():
                    await repo.touch_user(session, chat, language)
                for code, chats in work.follows.items():
                    for chat in chats:
                        await repo.subscribe(session, chat, code)
                for chat in work.inactive:
                    await repo.deactivate_user(session, chat)

            faults = RandomFaults(tg, random.Random(seed + 1), fault_rate)
            injector = asyncio.create_task(faults.run())
            outcomes: Counter[str] = Counter()
            not_ok: list[tuple[int, str]] = []
            expected: Counter[Key] = Counter()
            latencies: list[float] = []
            answers: list[Answer] = []
            gate = asyncio.Semaphore(concurrency)
            try:
                async with (
                    asyncio.timeout(deadline),
                    httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{settings.port}", timeout=30
                    ) as web,
                ):

                    async def post(body: dict[str, Any]) -> None:
                        async with gate:
                            began = time.perf_counter()
                            answer = await web.post(settings.starex_webhook_path, json=body)
                            ended = time.perf_counter()
                            latencies.append(ended - began)
                        if answer.status_code != 200:
                            not_ok.append((answer.status_code, answer.text))
                            return
                        outcome = answer.json()["outcome"]
                        outcomes[outcome] += 1
                        answers.append(Answer(body, outcome, began, ended))
                        if outcome == "stored":
                            when = local_minute(body["statetime"])
                            for chat in work.notified(body["barcode"]):
                                expected[(chat, body["barcode"], when)] += 1

                    began = time.perf_counter()
                    await asyncio.gather(*(post(body) for body in work.bodies))
                    ingest = time.perf_counter() - began
                    await _drained(app)
                    delivery = time.perf_counter() - began
                    # Anything still on its way (a duplicate, say) has time to show up.
                    await asyncio.sleep(quiet)
            finally:
                injector.cancel()
                await asyncio.gather(injector, return_exceptions=True)
            pending, failed = await _outbox_counts(app)

    delivered: Counter[Key] = Counter()
    unrecognised: list[str] = []
    for call in tg.sent_calls():
        chat, text = call.params.get("chat_id"), call.params.get("text", "")
        key = key_of(chat, text)
        if key is None:
            unrecognised.append(f"{chat}: {text}")
        else:
            delivered[key] += 1
    return SoakResult(
        posted=len(work.bodies),
        outcomes=outcomes,
        not_ok=not_ok,
        expected=expected,
        delivered=delivered,
        unrecognised=unrecognised,
        pending=pending,
        failed=failed,
        injected=faults.injected,
        send_attempts=len(tg.calls_of("sendMessage")),
        early_retries=early_retries(tg),
        misjudged=misjudged(answers),
        ingest_seconds=ingest,
        delivery_seconds=delivery,
        latencies=latencies,
    )


@dataclass(frozen=True)
class Answer:
    body: dict[str, Any]
    outcome: str
    began: float
    ended: float


def misjudged(answers: list[Answer]) -> list[str]:
    """Checks each webhook's outcome against the posts, not against the application:
    "duplicate" and "stale" need an identical or a newer change of the barcode posted
    before the answer came; "stored" needs that none was answered 200 before it was
    posted. (Posts in flight together may be ordered either way.)"""

    def same(a: Answer, b: Answer) -> bool:
        return a is not b and a.body == b.body

    def newer(a: Answer, b: Answer) -> bool:
        return a.body["barcode"] == b.body["barcode"] and a.body["statetime"] > b.body["statetime"]

    by_barcode: dict[str, list[Answer]] = {}
    for answer in answers:
        by_barcode.setdefault(answer.body["barcode"], []).append(answer)
    wrong = []
    for answer in answers:
        others = by_barcode[answer.body["barcode"]]
        if answer.outcome == "stored":
            plausible = not any(
                (same(o, answer) or newer(o, answer)) and o.ended < answer.began for o in others
            )
        else:
            earlier = same if answer.outcome == "duplicate" else newer
            plausible = any(earlier(o, answer) and o.began < answer.ended for o in others)
        if not plausible:
            wrong.append(f"{answer.outcome}: {answer.body}")
    return wrong


def early_retries(tg: FakeTelegram) -> list[tuple[int, float]]:
    """Chats sent to again sooner than a 429's retry_after (1 s) allowed."""
    early: list[tuple[int, float]] = []
    told: dict[int, float] = {}  # chat -> when its last 429 arrived
    for call in tg.calls_of("sendMessage"):
        chat = call.params.get("chat_id")
        if chat in told and call.at - told[chat] < 1.0:
            early.append((chat, call.at - told[chat]))
        if call.status == 429:
            told[chat] = call.at
    return early


def report(result: SoakResult, db_url: str) -> None:
    latencies = sorted(result.latencies)
    sent = sum(result.delivered.values())
    extra = result.extra
    print(f"database             {db_url.split(':')[0]}")
    print(
        f"webhooks posted      {result.posted}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(result.outcomes.items()))
        + (f", {len(result.not_ok)} not 200" if result.not_ok else "")
    )
    print(
        f"ingest               {result.posted / result.ingest_seconds:.0f} webhooks/s "
        f"({result.ingest_seconds:.1f} s), latency p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms"
    )
    print(
        f"notifications        {sum(result.expected.values())} expected, {sent} delivered "
        f"in {result.delivery_seconds:.1f} s ({sent / result.delivery_seconds:.0f} messages/s)"
    )
    print(
        f"sendMessage calls    {result.send_attempts}, faults injected "
        + ", ".join(f"{n} {k}" for k, n in sorted(result.injected.items()))
    )
    print(
        f"duplicates/extra     {sum(extra.values())}"
        f"; missing {sum(result.missing.values())}; unrecognised {len(result.unrecognised)}"
        f"; outbox pending {result.pending}, failed {result.failed}"
        f"; sent before retry_after {len(result.early_retries)}"
        f"; outcomes misjudged {len(result.misjudged)}"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS             {peak:.0f} MiB")


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite+aiosqlite:///{Path(tmp) / 'soak.db'}"
        result = await soak(
            url,
            events=args.events,
            subscribers=args.subscribers,
            barcodes=args.barcodes,
            fault_rate=args.fault_rate,
            seed=args.seed,
            duplicate_rate=args.duplicate_rate,
            late_rate=args.late_rate,
            concurrency=args.concurrency,
            deadline=args.deadline,
        )
    report(result, url)
    clean = not (
        result.extra
        or result.missing
        or result.unrecognised
        or result.not_ok
        or result.early_retries
        or result.misjudged
    )
    return 0 if clean and not (result.pending or result.failed) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="webhooks to post")
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--barcodes", type=int, default=500)
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of sends failing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duplicate-rate", type=float, default=0.25, help="share posted twice")
    parser.add_argument("--late-rate", type=float, default=0.1, help="share posted late")
    parser.add_argument("--concurrency", type=int, default=32, help="webhooks in flight")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: temporary SQLite)")
    # The notifier logs every failed send at WARNING; only give-ups (ERROR) matter here.
    logging.basicConfig(level=logging.ERROR)
    raise SystemExit(asyncio.run(main(parser.parse_args())))
