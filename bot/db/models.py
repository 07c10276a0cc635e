"""ORM models. Every datetime is naive UTC (`DateTime()` without a zone): SQLite has no
zone-aware type, so one convention for both engines keeps comparisons and migrations simple."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, query_expression, relationship

# Deterministic constraint names, so later migrations (and SQLite batch mode) can address them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUS_PENDING = "pending"
STATUS_SENT = "sent"
STATUS_FAILED = "failed"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken to be UTC already."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # Explicit choice made with /language; None means "follow language_code".
    language: Mapped[str | None] = mapped_column(String(8))
    # What Telegram reported last.
    language_code: Mapped[str | None] = mapped_column(String(16))
    # False once the user blocked the bot; any new message from them sets it back.
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, onupdate=utcnow)


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("chat_id", "barcode"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.chat_id", ondelete="CASCADE")
    )
    barcode: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class StateEntry(Base):
    """One entry of Starex's status dictionary (it changes over time, so it is fetched)."""

    __tablename__ = "states"

    code: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(Text)
    advanced: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, onupdate=utcnow)


class Event(Base):
    """A status change reported by the Starex webhook (the parcel's history)."""

    __tablename__ = "events"
    __table_args__ = (
        # Starex retries deliveries; the same change must be stored (and pushed) once.
        UniqueConstraint("barcode", "state", "statetime"),
        Index(None, "barcode", "statetime"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    barcode: Mapped[str] = mapped_column(String(64))
    state: Mapped[int] = mapped_column(Integer)
    statetime: Mapped[datetime] = mapped_column(DateTime())
    received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class Notification(Base):
    """Outbox row: one event to push to one chat. Durable so nothing is lost on a crash."""

    __tablename__ = "outbox"
    __table_args__ = (
        # A person never gets the same change twice.
        UniqueConstraint("event_id", "chat_id"),
        Index(None, "status", "next_attempt_at"),
        # postpone_chat / fail_pending_for_chat filter by chat.
        Index(None, "chat_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(Integer, ForeignKey("events.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.chat_id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(
        String(16), default=STATUS_PENDING, server_default=STATUS_PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime())

    # lazy="raise": under asyncio an implicit lazy load cannot work anyway; fail loudly instead.
    event: Mapped[Event] = relationship(lazy="raise")
    user: Mapped[User] = relationship(lazy="raise")
    # The subscription's label, filled only by repo.due_notifications (None otherwise,
    # and None when the subscription has no label or no longer exists).
    label: Mapped[str | None] = query_expression()
