"""Texts shown to people: notifications, traces, status lines (Telegram HTML).

Every string from outside (Starex names, labels, recipients) goes through `esc`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from functools import partial
from html import escape
from zoneinfo import ZoneInfo

from babel.numbers import format_decimal

from bot.i18n import Translator
from bot.starex.models import Trace, TraceStep

TELEGRAM_LIMIT = 4096
# Outside text is cut before escaping so one absurd field cannot fill a message.
MAX_FIELD = 200


def esc(text: object) -> str:
    value = str(text)
    if len(value) > MAX_FIELD:
        value = value[: MAX_FIELD - 1] + "…"
    return escape(value, quote=False)


def mask_name(name: str | None) -> str:
    """`Alisher Karimov` -> `A*** K***`: enough to recognise, never the full name.
    A word's first letter or digit; a word without one (a zero-width space, a dash)
    is no word."""
    initials = (next((c for c in word if c.isalnum()), None) for word in (name or "").split())
    return " ".join(f"{initial}***" for initial in initials if initial)


def format_time(moment: date) -> str:
    """A datetime to the minute; a day alone when Starex gave no time of day."""
    if isinstance(moment, datetime):
        return moment.strftime("%d.%m.%Y %H:%M")
    return moment.strftime("%d.%m.%Y")


def utc_to_local(moment: datetime, zone: ZoneInfo) -> datetime:
    """Stored times are naive UTC; people read them in Starex's zone."""
    return moment.replace(tzinfo=UTC).astimezone(zone)


def split_blocks(blocks: Iterable[str], limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Join whole blocks with new lines into messages no longer than `limit`.

    Blocks are each well-formed HTML, so cutting between them never breaks tags.
    """
    messages: list[str] = []
    current = ""
    for block in blocks:
        if len(block) > limit:  # cannot happen with MAX_FIELD; keep the promise anyway
            block = block[: limit - 1] + "…"
        candidate = f"{current}\n{block}" if current else block
        if len(candidate) > limit:
            messages.append(current)
            candidate = block
        current = candidate
    if current:
        messages.append(current)
    return messages


StatusName = Callable[[TraceStep], str]


def parcel_title(barcode: str, label: str | None = None) -> str:
    title = f"📦 <b>{esc(barcode)}</b>"
    return f"{title} — {esc(label)}" if label else title


def render_notification(
    i18n: Translator,
    locale: str,
    *,
    barcode: str,
    status: str,
    when: datetime,
    label: str | None = None,
) -> str:
    _ = partial(i18n.gettext, locale=locale)
    lines = [
        parcel_title(barcode, label),
        _("New status: <b>{status}</b>").format(status=esc(status)),
        _("Time: {time}").format(time=format_time(when)),
    ]
    return "\n".join(lines)


def render_status_line(
    i18n: Translator,
    locale: str,
    *,
    barcode: str,
    status: str | None,
    when: datetime | None,
    label: str | None = None,
) -> str:
    _ = partial(i18n.gettext, locale=locale)
    line = parcel_title(barcode, label)
    if status is None:
        return line + "\n" + _("No status received yet.")
    suffix = f" ({format_time(when)})" if when else ""
    return f"{line}\n{esc(status)}{suffix}"


def render_trace(i18n: Translator, locale: str, trace: Trace, status_name: StatusName) -> list[str]:
    """The full decoded history, oldest first, split under Telegram's limit."""
    _ = partial(i18n.gettext, locale=locale)
    header = [parcel_title(trace.barcode)]
    if trace.date:
        header.append(_("Accepted: {date}").format(date=format_time(trace.date)))
    if trace.weight is not None:
        weight = format_decimal(trace.weight, locale=locale)  # 1,5 in ru and uz
        header.append(_("Weight: {weight} kg").format(weight=weight))
    recipient = mask_name(trace.recipient)  # empty for a name of blanks
    if recipient:
        header.append(_("Recipient: {name}").format(name=esc(recipient)))
    blocks = ["\n".join(header)]
    if not trace.steps:
        blocks.append(_("No status history yet."))
    steps = trace.steps
    if all(step.statetime is not None for step in steps):
        steps = sorted(steps, key=lambda step: step.statetime)  # stable for equal times
    # else Starex's own order, which its document calls chronological
    for step in steps:
        name = f"<b>{esc(status_name(step))}</b>"
        blocks.append(f"{format_time(step.statetime)} — {name}" if step.statetime else name)
    return split_blocks(blocks)
