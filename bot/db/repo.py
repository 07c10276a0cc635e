"""Queries the rest of the bot uses. Plain async functions taking an AsyncSession.

None of them commits: the caller owns the transaction, so e.g. storing a webhook event
and queueing its notifications is one commit. Barcodes are stored exactly as given;
callers pass them normalized.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Integer, String, delete, exists, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, contains_eager, joinedload, with_expression

from bot.db.models import (
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_SENT,
    Event,
    Notification,
    StateEntry,
    Subscription,
    User,
    to_naive_utc,
    utcnow,
)


def _insert(session: AsyncSession, model: Any) -> Any:
    """INSERT of the session's dialect, for ON CONFLICT clauses.

    SQLite and PostgreSQL spell `on_conflict_do_nothing/do_update` alike, but each needs
    its own dialect construct; generic `insert()` has no ON CONFLICT.
    """
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


# --- users ---------------------------------------------------------------------------


async def touch_user(session: AsyncSession, chat_id: int, language_code: str | None) -> User:
    """The user behind an incoming message: created if new, else refreshed.

    Any message means the user can receive again, so is_active goes back to True.
    """
    user = await session.get(User, chat_id)
    if user is None:
        # Insert-or-ignore: two first messages handled at once must not collide.
        await session.execute(
            _insert(session, User)
            .values(chat_id=chat_id, language_code=language_code, is_active=True)
            .on_conflict_do_nothing(index_elements=[User.chat_id])
        )
        user = (await session.scalars(select(User).where(User.chat_id == chat_id))).one()
    # Only write when something changed: most messages come from known, active users.
    if language_code is not None and user.language_code != language_code:
        user.language_code = language_code
    if not user.is_active:
        user.is_active = True
    await session.flush()
    return user


async def get_user(session: AsyncSession, chat_id: int) -> User | None:
    return await session.get(User, chat_id)


async def set_language(session: AsyncSession, chat_id: int, language: str | None) -> bool:
    """Store the explicit choice (None clears it). False when there is no such user."""
    result = await session.execute(
        update(User).where(User.chat_id == chat_id).values(language=language)
    )
    return result.rowcount == 1


async def deactivate_user(session: AsyncSession, chat_id: int) -> bool:
    """Mark a user who blocked the bot. False when there is no such user."""
    result = await session.execute(
        update(User).where(User.chat_id == chat_id).values(is_active=False)
    )
    return result.rowcount == 1


# --- subscriptions -------------------------------------------------------------------


async def subscribe(
    session: AsyncSession, chat_id: int, barcode: str, label: str | None = None
) -> bool:
    """True when newly subscribed, False when it already existed. A label given again
    replaces the old one; none given (a button) keeps it.

    The user must exist (touch_user first): chat_id is a foreign key.
    """
    result = await session.execute(
        _insert(session, Subscription)
        .values(chat_id=chat_id, barcode=barcode, label=label)
        .on_conflict_do_nothing(index_elements=[Subscription.chat_id, Subscription.barcode])
    )
    created = result.rowcount == 1
    if not created and label is not None:
        await session.execute(
            update(Subscription)
            .where(Subscription.chat_id == chat_id, Subscription.barcode == barcode)
            .values(label=label)
        )
    return created


async def unsubscribe(session: AsyncSession, chat_id: int, barcode: str) -> bool:
    """True when a subscription was removed."""
    result = await session.execute(
        delete(Subscription).where(Subscription.chat_id == chat_id, Subscription.barcode == barcode)
    )
    return result.rowcount == 1


async def list_subscriptions(session: AsyncSession, chat_id: int) -> list[Subscription]:
    result = await session.scalars(
        select(Subscription)
        .where(Subscription.chat_id == chat_id)
        .order_by(Subscription.created_at, Subscription.id)
    )
    return list(result)


async def count_subscriptions(session: AsyncSession, chat_id: int) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Subscription).where(Subscription.chat_id == chat_id)
    )
    return count or 0


async def is_subscribed(session: AsyncSession, chat_id: int, barcode: str) -> bool:
    found = await session.scalar(
        select(exists().where(Subscription.chat_id == chat_id, Subscription.barcode == barcode))
    )
    return bool(found)


# --- status dictionary ---------------------------------------------------------------


async def load_states(session: AsyncSession) -> dict[int, StateEntry]:
    # populate_existing: entries already in this session may predate a save_states.
    result = await session.scalars(select(StateEntry).execution_options(populate_existing=True))
    return {entry.code: entry for entry in result}


async def save_states(
    session: AsyncSession, states: Iterable[tuple[int, str | None, str | None]]
) -> None:
    """Upsert (code, name, advanced) entries. Codes missing from `states` are kept:
    stored events still refer to them."""
    now = utcnow()
    # Last one wins if a code repeats; one upsert must not touch the same row twice.
    rows = {
        code: {"code": code, "name": name, "advanced": advanced, "updated_at": now}
        for code, name, advanced in states
    }
    if not rows:
        return
    stmt = _insert(session, StateEntry).values(list(rows.values()))
    stmt = stmt.on_conflict_do_update(
        index_elements=[StateEntry.code],
        set_={
            "name": stmt.excluded.name,
            "advanced": stmt.excluded.advanced,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    await session.execute(stmt)


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordResult:
    event_id: int | None
    duplicate: bool  # the same (barcode, state, statetime) was stored before
    stale: bool  # stored, but a later change of this barcode is already known
    queued: int  # outbox rows created


async def record_event(
    session: AsyncSession, barcode: str, state: int, statetime: datetime
) -> RecordResult:
    """Store a status change and queue one notification per active subscriber.

    Everything happens in the caller's transaction, so committing it makes the event and
    its notifications durable together.
    """
    statetime = to_naive_utc(statetime)
    now = utcnow()
    event_id = await session.scalar(
        _insert(session, Event)
        .values(barcode=barcode, state=state, statetime=statetime, received_at=now)
        .on_conflict_do_nothing(index_elements=[Event.barcode, Event.state, Event.statetime])
        .returning(Event.id)
    )
    if event_id is None:
        existing = await session.scalar(
            select(Event.id).where(
                Event.barcode == barcode, Event.state == state, Event.statetime == statetime
            )
        )
        return RecordResult(event_id=existing, duplicate=True, stale=False, queued=0)

    newer = await session.scalar(
        select(exists().where(Event.barcode == barcode, Event.statetime > statetime))
    )
    if newer:
        return RecordResult(event_id=event_id, duplicate=False, stale=True, queued=0)

    subscribers = (
        select(
            literal(event_id, Integer),
            Subscription.chat_id,
            literal(STATUS_PENDING, String),
            literal(0, Integer),
            literal(now, DateTime()),
            literal(now, DateTime()),
        )
        .join(User, User.chat_id == Subscription.chat_id)
        .where(Subscription.barcode == barcode, User.is_active)
    )
    result = await session.execute(
        _insert(session, Notification.__table__)
        .from_select(
            ["event_id", "chat_id", "status", "attempts", "next_attempt_at", "created_at"],
            subscribers,
        )
        .on_conflict_do_nothing(index_elements=["event_id", "chat_id"])
    )
    return RecordResult(event_id=event_id, duplicate=False, stale=False, queued=result.rowcount)


async def latest_event(session: AsyncSession, barcode: str) -> Event | None:
    return await session.scalar(
        select(Event)
        .where(Event.barcode == barcode)
        .order_by(Event.statetime.desc(), Event.id.desc())
        .limit(1)
    )


async def events_for(session: AsyncSession, barcode: str) -> list[Event]:
    """Every stored change of a barcode, oldest first (the history when Starex is down)."""
    result = await session.scalars(
        select(Event).where(Event.barcode == barcode).order_by(Event.statetime, Event.id)
    )
    return list(result)


async def latest_events(session: AsyncSession, barcodes: Iterable[str]) -> dict[str, Event]:
    """Latest event per barcode; barcodes without events are absent from the result."""
    wanted = set(barcodes)
    if not wanted:
        return {}
    ranked = (
        select(
            Event.id,
            func.row_number()
            .over(partition_by=Event.barcode, order_by=(Event.statetime.desc(), Event.id.desc()))
            .label("rank"),
        )
        .where(Event.barcode.in_(wanted))
        .subquery()
    )
    result = await session.scalars(
        select(Event).join(ranked, ranked.c.id == Event.id).where(ranked.c.rank == 1)
    )
    return {event.barcode: event for event in result}


# --- outbox --------------------------------------------------------------------------


async def due_notifications(session: AsyncSession, now: datetime, limit: int) -> list[Notification]:
    """Pending rows whose time has come, per chat in the order the changes happened.

    `.event` and `.user` are loaded; `.label` holds the subscription's label (None when
    it has none or the user unsubscribed since). Claim each row before sending it.
    """
    now = to_naive_utc(now)
    label = (
        select(Subscription.label)
        .where(Subscription.chat_id == Notification.chat_id, Subscription.barcode == Event.barcode)
        .scalar_subquery()
    )
    # A chat with a row waiting (retry_after, backoff, or a lease while another worker
    # sends it) sends nothing else meanwhile, so no change overtakes an earlier one,
    # across restarts and processes alike.
    waiting = aliased(Notification)
    chat_waits = exists().where(
        waiting.chat_id == Notification.chat_id,
        waiting.status == STATUS_PENDING,
        waiting.next_attempt_at > now,
    )
    result = await session.scalars(
        select(Notification)
        .join(Notification.event)
        .where(
            Notification.status == STATUS_PENDING,
            Notification.next_attempt_at <= now,
            ~chat_waits,
        )
        .order_by(Notification.chat_id, Event.statetime, Notification.id)
        .limit(limit)
        .options(
            contains_eager(Notification.event),
            joinedload(Notification.user),
            with_expression(Notification.label, label),
        )
        # Rows already in the session must be refreshed, label included.
        .execution_options(populate_existing=True)
    )
    return list(result)


async def claim(
    session: AsyncSession, notification_id: int, now: datetime, lease_seconds: float
) -> bool:
    """Take a due row for sending: True for exactly one caller.

    The lease pushes next_attempt_at forward, so no other worker sees the row as due,
    and a send that crashed midway is retried once the lease runs out. Commit right
    after claiming (before sending) for other processes to see it.
    """
    now = to_naive_utc(now)
    result = await session.execute(
        update(Notification)
        .where(
            Notification.id == notification_id,
            Notification.status == STATUS_PENDING,
            Notification.next_attempt_at <= now,
        )
        .values(
            next_attempt_at=now + timedelta(seconds=lease_seconds),
            attempts=Notification.attempts + 1,
        )
    )
    return result.rowcount == 1


async def mark_sent(session: AsyncSession, notification_id: int, now: datetime) -> None:
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id)
        .values(status=STATUS_SENT, sent_at=to_naive_utc(now))
    )


async def reschedule(
    session: AsyncSession,
    notification_id: int,
    when: datetime,
    error: str | None,
    *,
    refund_attempt: bool = False,
) -> None:
    """Try a pending row again at `when`. `refund_attempt` takes back the attempt its
    claim counted (Telegram's retry_after is not the row's failure)."""
    attempts = Notification.attempts - 1 if refund_attempt else Notification.attempts
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == STATUS_PENDING)
        .values(next_attempt_at=to_naive_utc(when), last_error=error, attempts=attempts)
    )


async def next_attempt_at(session: AsyncSession) -> datetime | None:
    """When the earliest pending row is due (naive UTC), or None when none is pending."""
    return await session.scalar(
        select(func.min(Notification.next_attempt_at)).where(Notification.status == STATUS_PENDING)
    )


async def postpone_chat(session: AsyncSession, chat_id: int, when: datetime) -> int:
    """Hold every pending row of a chat until at least `when` (retry_after, backoff), so a
    later change cannot overtake an earlier one. Returns how many rows moved."""
    when = to_naive_utc(when)
    result = await session.execute(
        update(Notification)
        .where(
            Notification.chat_id == chat_id,
            Notification.status == STATUS_PENDING,
            Notification.next_attempt_at < when,
        )
        .values(next_attempt_at=when)
    )
    return result.rowcount


async def mark_failed(session: AsyncSession, notification_id: int, error: str) -> None:
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id)
        .values(status=STATUS_FAILED, last_error=error)
    )


async def give_up_on_chat(session: AsyncSession, chat_id: int, error: str) -> None:
    """The person blocked the bot (or is gone): inactive from now on, nothing queued for
    them is sent, until they write again (touch_user)."""
    await deactivate_user(session, chat_id)
    await fail_pending_for_chat(session, chat_id, error)


async def fail_pending_for_chat(session: AsyncSession, chat_id: int, error: str) -> int:
    """Give up on every pending row of a chat (the user blocked the bot)."""
    result = await session.execute(
        update(Notification)
        .where(Notification.chat_id == chat_id, Notification.status == STATUS_PENDING)
        .values(status=STATUS_FAILED, last_error=error)
    )
    return result.rowcount


async def drop_pending_for(session: AsyncSession, chat_id: int, barcode: str) -> int:
    """Give up on a chat's pending rows for one barcode (the person unsubscribed). A row
    being sent right now is recorded as sent when Telegram answers."""
    of_barcode = select(Event.id).where(Event.barcode == barcode)
    result = await session.execute(
        update(Notification)
        .where(
            Notification.chat_id == chat_id,
            Notification.status == STATUS_PENDING,
            Notification.event_id.in_(of_barcode),
        )
        .values(status=STATUS_FAILED, last_error="unsubscribed")
    )
    return result.rowcount


async def lock_user(session: AsyncSession, chat_id: int) -> None:
    """Serialise a person's concurrent changes to their subscriptions (PostgreSQL; SQLite
    has one writer anyway)."""
    await session.execute(select(User.chat_id).where(User.chat_id == chat_id).with_for_update())


async def count_pending(session: AsyncSession) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Notification).where(Notification.status == STATUS_PENDING)
    )
    return count or 0


async def stats(session: AsyncSession) -> dict[str, int]:
    """Figures for the admins' /stats."""

    async def count(query: Any) -> int:
        return (await session.scalar(query)) or 0

    return {
        "users": await count(select(func.count()).select_from(User)),
        "active_users": await count(
            select(func.count()).select_from(User).where(User.is_active.is_(True))
        ),
        "subscriptions": await count(select(func.count()).select_from(Subscription)),
        "events": await count(select(func.count()).select_from(Event)),
        "pending_notifications": await count_pending(session),
        "failed_notifications": await count(
            select(func.count())
            .select_from(Notification)
            .where(Notification.status == STATUS_FAILED)
        ),
    }
