"""Repository functions on a migrated database (SQLite and, when configured, PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import repo
from bot.db.engine import create_engine, ping, upgrade_database
from bot.db.models import Event, Notification, Subscription, User, to_naive_utc, utcnow

T0 = datetime(2024, 5, 1, 10, 0, 0)


@pytest.fixture
async def session(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


async def add_users(session: AsyncSession, *chat_ids: int, active: bool = True) -> None:
    for chat_id in chat_ids:
        await repo.touch_user(session, chat_id, "ru")
        if not active:
            await repo.deactivate_user(session, chat_id)


async def outbox_chats(session: AsyncSession, event_id: int) -> list[int]:
    rows = await session.scalars(
        select(Notification.chat_id).where(Notification.event_id == event_id)
    )
    return sorted(rows)


async def count(session: AsyncSession, model: type) -> int:
    return await session.scalar(select(func.count()).select_from(model)) or 0


# --- engine --------------------------------------------------------------------------


async def test_sqlite_pragmas_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "bot.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as connection:

            async def pragma(name: str) -> object:
                return (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()

            assert await pragma("journal_mode") == "wal"
            assert await pragma("busy_timeout") == 5000
            assert await pragma("foreign_keys") == 1
            assert await pragma("synchronous") == 1  # NORMAL
        assert path.is_file()
    finally:
        await engine.dispose()


async def test_ping(engine: AsyncEngine) -> None:
    assert await ping(engine) is True


async def test_ping_unreachable_database() -> None:
    # Port 1: nothing listens there, so the connection is refused.
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    try:
        assert await ping(engine) is False
    finally:
        await engine.dispose()


async def test_ping_disposed_sqlite_folder_gone(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    engine = create_engine(f"sqlite+aiosqlite:///{folder / 'bot.db'}")
    folder.rmdir()  # SQLite cannot create the file any more
    try:
        assert await ping(engine) is False
    finally:
        await engine.dispose()
    # aiosqlite stops the failed connection's thread through a future of this loop;
    # let it finish before the loop closes, or its thread raises in a later test.
    for _ in range(100):
        if not any(
            "_connection_worker_thread" in repr(getattr(t, "_target", None))
            for t in threading.enumerate()
        ):
            break
        await asyncio.sleep(0.02)


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await upgrade_database(engine)
    assert await ping(engine) is True
    yield engine
    await engine.dispose()


async def test_ping_sqlite_file_deleted_while_open(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    # Writes would still succeed, into the unlinked file, and be gone at restart.
    (tmp_path / "bot.db").unlink()
    assert await ping(sqlite_engine) is False


async def test_ping_sqlite_file_replaced_while_open(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "other.db").write_bytes(b"")
    (tmp_path / "other.db").replace(tmp_path / "bot.db")
    assert await ping(sqlite_engine) is False


def chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


async def test_ping_sqlite_file_not_writable(sqlite_engine: AsyncEngine, tmp_path: Path) -> None:
    # Tests run as root, for whom chmod 444 changes nothing; the immutable attribute
    # holds root back too (on ext4 and the like, with CAP_LINUX_IMMUTABLE).
    path = tmp_path / "bot.db"
    if not chattr("+i", path):
        pytest.skip("cannot make the file immutable here (chattr +i)")
    try:
        assert await ping(sqlite_engine) is False
    finally:
        assert chattr("-i", path)
    assert await ping(sqlite_engine) is True


async def test_upgrade_database_on_migrated_engine_is_noop(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with session_factory() as session:
        await add_users(session, 1)
        await session.commit()
    await upgrade_database(engine)
    async with session_factory() as session:
        assert await repo.get_user(session, 1) is not None


# --- users ---------------------------------------------------------------------------


async def test_touch_user_creates_and_refreshes(session: AsyncSession) -> None:
    user = await repo.touch_user(session, 42, "uz")
    assert (user.chat_id, user.language_code, user.is_active, user.language) == (
        42,
        "uz",
        True,
        None,
    )
    assert user.created_at <= utcnow()

    user = await repo.touch_user(session, 42, None)  # unknown code keeps the last one
    assert user.language_code == "uz"
    user = await repo.touch_user(session, 42, "en")
    assert user.language_code == "en"

    assert await repo.deactivate_user(session, 42) is True
    await session.commit()
    session.expunge_all()
    assert (await repo.get_user(session, 42)).is_active is False
    user = await repo.touch_user(session, 42, "en")  # any message: reachable again
    assert user.is_active is True
    assert await count(session, User) == 1


async def test_touch_user_concurrent_first_messages(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async def first_message(code: str) -> User:
        async with session_factory() as session:
            user = await repo.touch_user(session, 7, code)
            await session.commit()
            return user

    users = await asyncio.gather(first_message("ru"), first_message("ru"))
    assert [u.chat_id for u in users] == [7, 7]
    async with session_factory() as session:
        assert await count(session, User) == 1


async def test_get_user_set_language_deactivate(session: AsyncSession) -> None:
    assert await repo.get_user(session, 1) is None
    assert await repo.set_language(session, 1, "en") is False
    assert await repo.deactivate_user(session, 1) is False

    await add_users(session, 1)
    assert await repo.set_language(session, 1, "uz") is True
    await session.commit()
    session.expunge_all()
    user = await repo.get_user(session, 1)
    assert (user.language, user.is_active) == ("uz", True)

    assert await repo.set_language(session, 1, None) is True
    assert (await repo.get_user(session, 1)).language is None


# --- subscriptions -------------------------------------------------------------------


async def test_subscriptions(session: AsyncSession) -> None:
    await add_users(session, 1, 2)
    assert await repo.subscribe(session, 1, "AB123", label="shoes") is True
    assert await repo.subscribe(session, 1, "CD456") is True
    assert await repo.subscribe(session, 1, "AB123", label="other") is False  # renamed
    assert await repo.subscribe(session, 1, "AB123") is False  # no label given: kept
    assert await repo.subscribe(session, 2, "AB123") is True

    subs = await repo.list_subscriptions(session, 1)
    assert [(s.barcode, s.label) for s in subs] == [("AB123", "other"), ("CD456", None)]
    assert await repo.count_subscriptions(session, 1) == 2
    assert await repo.count_subscriptions(session, 3) == 0
    assert await repo.is_subscribed(session, 1, "CD456") is True
    assert await repo.is_subscribed(session, 2, "CD456") is False

    assert await repo.unsubscribe(session, 1, "CD456") is True
    assert await repo.unsubscribe(session, 1, "CD456") is False
    assert await repo.is_subscribed(session, 1, "CD456") is False
    assert [s.barcode for s in await repo.list_subscriptions(session, 1)] == ["AB123"]
    assert await repo.is_subscribed(session, 2, "AB123") is True


async def test_concurrent_subscribe_same_pair(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session:
        await add_users(session, 1)
        await session.commit()

    async def subscribe() -> bool:
        async with session_factory() as session:
            created = await repo.subscribe(session, 1, "AB123")
            await session.commit()
            return created

    results = await asyncio.gather(subscribe(), subscribe())
    assert sorted(results) == [False, True]
    async with session_factory() as session:
        assert await count(session, Subscription) == 1


async def test_deleting_user_cascades(session: AsyncSession) -> None:
    await add_users(session, 1)
    await repo.subscribe(session, 1, "AB123")
    result = await repo.record_event(session, "AB123", 1, T0)
    assert result.queued == 1
    await session.execute(delete(User).where(User.chat_id == 1))
    # Foreign keys are enforced (SQLite needs PRAGMA foreign_keys for that).
    assert await count(session, Subscription) == 0
    assert await count(session, Notification) == 0


async def test_repo_does_not_commit(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        await add_users(session, 1)
        await repo.subscribe(session, 1, "AB123")
        await repo.record_event(session, "AB123", 1, T0)
        await session.rollback()
    async with session_factory() as session:
        assert await count(session, User) == 0
        assert await count(session, Event) == 0


# --- status dictionary ---------------------------------------------------------------


async def test_save_and_load_states(session: AsyncSession) -> None:
    assert await repo.load_states(session) == {}
    await repo.save_states(session, [(1, "Принят", "accepted"), (2, "В пути", None)])
    await repo.save_states(session, [])  # nothing to do
    states = await repo.load_states(session)
    assert {c: (s.name, s.advanced) for c, s in states.items()} == {
        1: ("Принят", "accepted"),
        2: ("В пути", None),
    }

    # Code 2 disappears from Starex's list but stays: old events refer to it.
    await repo.save_states(session, [(1, "Принят на склад", "accepted_wh"), (3, None, "x")])
    await session.commit()
    states = await repo.load_states(session)
    assert {c: (s.name, s.advanced) for c, s in states.items()} == {
        1: ("Принят на склад", "accepted_wh"),
        2: ("В пути", None),
        3: (None, "x"),
    }


# --- events --------------------------------------------------------------------------


async def test_record_event_queues_active_subscribers(session: AsyncSession) -> None:
    await add_users(session, 1, 2, 4)
    await add_users(session, 3, active=False)
    for chat_id in (1, 2, 3):
        await repo.subscribe(session, chat_id, "AB123")
    await repo.subscribe(session, 4, "OTHER")

    result = await repo.record_event(session, "AB123", 5, T0)
    assert (result.duplicate, result.stale, result.queued) == (False, False, 2)
    assert result.event_id is not None
    assert await outbox_chats(session, result.event_id) == [1, 2]
    row = await session.scalar(select(Notification).where(Notification.chat_id == 1))
    assert (row.status, row.attempts, row.sent_at) == ("pending", 0, None)
    assert row.next_attempt_at <= utcnow()


async def test_record_event_without_subscribers(session: AsyncSession) -> None:
    result = await repo.record_event(session, "NOBODY", 1, T0)
    assert (result.duplicate, result.stale, result.queued) == (False, False, 0)
    assert await count(session, Event) == 1


async def test_duplicate_event(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        await add_users(session, 1)
        await repo.subscribe(session, 1, "AB123")
        first = await repo.record_event(session, "AB123", 5, T0)
        await session.commit()
    async with session_factory() as session:
        # A subscriber added later must not get the old change on a redelivery either.
        await add_users(session, 2)
        await repo.subscribe(session, 2, "AB123")
        again = await repo.record_event(session, "AB123", 5, T0)
        await session.commit()
        assert (again.event_id, again.duplicate, again.stale, again.queued) == (
            first.event_id,
            True,
            False,
            0,
        )
        assert await count(session, Event) == 1
        assert await outbox_chats(session, first.event_id) == [1]


async def test_stale_event_is_stored_not_pushed(session: AsyncSession) -> None:
    await add_users(session, 1)
    await repo.subscribe(session, 1, "AB123")
    newer = await repo.record_event(session, "AB123", 7, T0 + timedelta(hours=2))
    assert newer.queued == 1

    older = await repo.record_event(session, "AB123", 5, T0)
    assert (older.duplicate, older.stale, older.queued) == (False, True, 0)
    assert older.event_id is not None
    assert await count(session, Event) == 2
    assert await outbox_chats(session, older.event_id) == []

    # Same moment, another state: not older than anything known, so pushed.
    same_time = await repo.record_event(session, "AB123", 8, T0 + timedelta(hours=2))
    assert (same_time.stale, same_time.queued) == (False, 1)
    # Other barcodes are unaffected by AB123's history.
    assert (await repo.record_event(session, "CD456", 1, T0)).stale is False


async def test_record_event_normalizes_aware_time(session: AsyncSession) -> None:
    tashkent = timezone(timedelta(hours=5))
    aware = datetime(2024, 5, 1, 15, 0, tzinfo=tashkent)
    first = await repo.record_event(session, "AB123", 1, aware)
    again = await repo.record_event(session, "AB123", 1, T0)  # the same instant in UTC
    assert again.duplicate is True
    assert again.event_id == first.event_id
    assert (await repo.latest_event(session, "AB123")).statetime == T0
    assert to_naive_utc(datetime(2024, 1, 1, tzinfo=UTC)) == datetime(2024, 1, 1)


async def test_latest_event(session: AsyncSession) -> None:
    assert await repo.latest_event(session, "AB123") is None
    await repo.record_event(session, "AB123", 1, T0)
    await repo.record_event(session, "AB123", 3, T0 + timedelta(hours=3))
    await repo.record_event(session, "AB123", 2, T0 + timedelta(hours=1))  # stale
    await repo.record_event(session, "CD456", 9, T0 + timedelta(days=1))
    latest = await repo.latest_event(session, "AB123")
    assert (latest.state, latest.statetime) == (3, T0 + timedelta(hours=3))

    # Equal statetime: the one stored last wins.
    await repo.record_event(session, "AB123", 4, T0 + timedelta(hours=3))
    assert (await repo.latest_event(session, "AB123")).state == 4


async def test_latest_events(session: AsyncSession) -> None:
    assert await repo.latest_events(session, []) == {}
    await repo.record_event(session, "AB123", 1, T0)
    await repo.record_event(session, "AB123", 3, T0 + timedelta(hours=3))
    await repo.record_event(session, "AB123", 4, T0 + timedelta(hours=3))
    await repo.record_event(session, "CD456", 2, T0 + timedelta(hours=1))
    await repo.record_event(session, "CD456", 1, T0)
    await repo.record_event(session, "ZZZ", 1, T0)

    latest = await repo.latest_events(session, ["AB123", "CD456", "MISSING", "AB123"])
    assert {barcode: event.state for barcode, event in latest.items()} == {
        "AB123": 4,
        "CD456": 2,
    }


# --- outbox --------------------------------------------------------------------------


async def queue(session: AsyncSession) -> dict[tuple[int, str], int]:
    """Two chats, two barcodes, three changes; returns outbox ids by (chat, barcode+state)."""
    await add_users(session, 1, 2)
    await repo.subscribe(session, 1, "AB123", label="<b>shoes</b>")
    await repo.subscribe(session, 1, "CD456")
    await repo.subscribe(session, 2, "AB123")
    await repo.record_event(session, "CD456", 1, T0 + timedelta(hours=1))
    await repo.record_event(session, "AB123", 1, T0)
    await repo.record_event(session, "AB123", 2, T0 + timedelta(hours=2))
    ids = {}
    for n in await session.scalars(select(Notification)):
        event = await session.get(Event, n.event_id)
        ids[(n.chat_id, f"{event.barcode}/{event.state}")] = n.id
    return ids


async def test_due_notifications(session: AsyncSession) -> None:
    ids = await queue(session)
    await session.commit()
    due = await repo.due_notifications(session, utcnow(), limit=100)
    # Per chat, oldest change first.
    assert [n.id for n in due] == [
        ids[(1, "AB123/1")],
        ids[(1, "CD456/1")],
        ids[(1, "AB123/2")],
        ids[(2, "AB123/1")],
        ids[(2, "AB123/2")],
    ]
    first = due[0]
    assert (first.event.barcode, first.event.state, first.user.chat_id) == ("AB123", 1, 1)
    assert first.user.language_code == "ru"
    assert [n.label for n in due] == ["<b>shoes</b>", None, "<b>shoes</b>", None, None]

    assert len(await repo.due_notifications(session, utcnow(), limit=2)) == 2
    # Nothing is due before it was queued.
    assert await repo.due_notifications(session, utcnow() - timedelta(hours=1), 100) == []


async def test_due_notifications_label_after_unsubscribe(session: AsyncSession) -> None:
    ids = await queue(session)
    await repo.unsubscribe(session, 1, "AB123")
    due = {n.id: n for n in await repo.due_notifications(session, utcnow(), 100)}
    assert due[ids[(1, "AB123/1")]].label is None


async def test_relationships_are_not_lazy_loaded(session: AsyncSession) -> None:
    ids = await queue(session)
    await session.commit()
    session.expunge_all()
    notification = await session.get(Notification, ids[(1, "AB123/1")])
    with pytest.raises(InvalidRequestError):
        _ = notification.event


async def test_claim(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        ids = await queue(session)
        await session.commit()
    target = ids[(1, "AB123/1")]
    now = utcnow()

    async with session_factory() as first, session_factory() as second:
        assert await repo.claim(first, target, now, lease_seconds=60) is True
        await first.commit()
        assert await repo.claim(second, target, now, lease_seconds=60) is False
        await second.commit()

    async with session_factory() as session:
        row = await session.get(Notification, target)
        assert row.attempts == 1
        assert row.next_attempt_at == now + timedelta(seconds=60)
        # Claimed rows are not due during the lease...
        due = await repo.due_notifications(session, now, 100)
        assert target not in [n.id for n in due]
        # ...nor are the chat's other rows: they wait behind it, keeping the order.
        assert [n.chat_id for n in due] == [2, 2]
        # ...and come back once it ran out (a crashed send is retried).
        later = now + timedelta(seconds=61)
        assert await repo.claim(session, target, later, lease_seconds=60) is True
        assert (await session.get(Notification, target)).attempts == 2
        # Not due yet / unknown row: nothing to claim.
        assert await repo.claim(session, ids[(2, "AB123/1")], now - timedelta(hours=1), 60) is False
        assert await repo.claim(session, 10_000, now, 60) is False


async def test_concurrent_claim(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session:
        ids = await queue(session)
        await session.commit()
    target = ids[(2, "AB123/2")]
    now = utcnow()

    async def worker() -> bool:
        async with session_factory() as session:
            claimed = await repo.claim(session, target, now, lease_seconds=30)
            await session.commit()
            return claimed

    assert sorted(await asyncio.gather(worker(), worker(), worker())) == [False, False, True]


async def test_mark_sent(session: AsyncSession) -> None:
    ids = await queue(session)
    target = ids[(1, "AB123/1")]
    now = utcnow()
    assert await repo.claim(session, target, now, 60)
    await repo.mark_sent(session, target, now)
    row = await session.get(Notification, target)
    assert (row.status, row.sent_at) == ("sent", now)
    assert await repo.count_pending(session) == 4
    later = now + timedelta(hours=1)
    assert target not in [n.id for n in await repo.due_notifications(session, later, 100)]
    assert await repo.claim(session, target, later, 60) is False


async def test_reschedule_and_postpone_chat(session: AsyncSession) -> None:
    ids = await queue(session)
    now = utcnow()
    target = ids[(1, "AB123/1")]
    await repo.reschedule(session, target, now + timedelta(minutes=5), "network down")
    row = await session.get(Notification, target)
    assert (row.next_attempt_at, row.last_error, row.status) == (
        now + timedelta(minutes=5),
        "network down",
        "pending",
    )

    # retry_after for chat 1: every pending row of that chat waits at least that long,
    # rows already scheduled later are not pulled forward.
    moved = await repo.postpone_chat(session, 1, now + timedelta(minutes=2))
    assert moved == 2
    times = {
        n.id: n.next_attempt_at
        for n in await session.scalars(select(Notification).where(Notification.chat_id == 1))
    }
    assert times == {
        ids[(1, "AB123/1")]: now + timedelta(minutes=5),
        ids[(1, "CD456/1")]: now + timedelta(minutes=2),
        ids[(1, "AB123/2")]: now + timedelta(minutes=2),
    }
    due = await repo.due_notifications(session, now + timedelta(minutes=1), 100)
    assert {n.chat_id for n in due} == {2}


async def test_mark_failed_and_fail_pending_for_chat(session: AsyncSession) -> None:
    ids = await queue(session)
    assert await repo.count_pending(session) == 5
    await repo.mark_failed(session, ids[(2, "AB123/1")], "message is too long")
    assert await repo.count_pending(session) == 4

    assert await repo.fail_pending_for_chat(session, 1, "bot was blocked by the user") == 3
    assert await repo.fail_pending_for_chat(session, 1, "again") == 0
    assert await repo.count_pending(session) == 1
    rows = await session.scalars(select(Notification).where(Notification.chat_id == 1))
    assert {(n.status, n.last_error) for n in rows} == {("failed", "bot was blocked by the user")}
    due = await repo.due_notifications(session, utcnow(), 100)
    assert [n.id for n in due] == [ids[(2, "AB123/2")]]
