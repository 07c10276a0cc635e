"""Validation of Starex webhook bodies: which forms are accepted (README, "Webhook input")."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.barcodes import normalize
from bot.starex.models import STATE_CODE_LIMIT, plausible

MAX_BODY = 64 * 1024
MAX_CLOCK_SKEW = timedelta(days=1)
# Leading zeros, then below STATE_CODE_LIMIT. ASCII only: \d would take "١٢".
_DIGITS = re.compile(r"0*([0-9]{1,9})")


class BadPayload(ValueError):
    """The body cannot be accepted; the message is safe to return to the sender."""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    barcode: str
    state: int
    statetime: datetime  # naive UTC


def parse_event(body: bytes, zone: ZoneInfo) -> StatusEvent:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadPayload("body is not valid JSON") from None
    except ValueError:  # int() refuses over 4300 digits, wherever the number is
        raise BadPayload("body holds a number with too many digits") from None
    if not isinstance(data, dict):
        raise BadPayload("body must be a JSON object")
    return StatusEvent(
        barcode=_barcode(data.get("barcode")),
        state=_state(data.get("state")),
        statetime=_statetime(data.get("statetime"), zone),
    )


def _barcode(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadPayload("barcode must be a non-empty string")
    barcode = normalize(value)
    if barcode is None:
        raise BadPayload("barcode is not a valid barcode")
    return barcode


def _state(value: object) -> int:
    # bool is an int in Python; JSON true is not a status code.
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < STATE_CODE_LIMIT:
            return value
        raise BadPayload("state is out of range")
    if isinstance(value, str) and (digits := _DIGITS.fullmatch(value)):
        return int(digits[1])
    raise BadPayload("state must be an integer")


def _statetime(value: object, zone: ZoneInfo) -> datetime:
    """`YYYY-MM-DD HH:MM:SS` (the documented form) or any ISO 8601 date-time.

    A naive time is in Starex's zone; one with an offset is taken as given.
    """
    if not isinstance(value, str) or len(value.strip()) < 16:
        raise BadPayload("statetime must be a string like 'YYYY-MM-DD HH:MM:SS'")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadPayload("statetime must be a string like 'YYYY-MM-DD HH:MM:SS'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        moment = moment.astimezone(UTC).replace(tzinfo=None, microsecond=0)
    except OverflowError:  # year 1 or 9999 shifted past the calendar
        raise BadPayload("statetime is out of range") from None
    if not plausible(moment):  # a placeholder like 0001-01-01 cannot be shown in every zone
        raise BadPayload("statetime is out of range")
    # A change from the far future would make every real later one look stale.
    if moment > datetime.now(UTC).replace(tzinfo=None) + MAX_CLOCK_SKEW:
        raise BadPayload("statetime is in the future")
    return moment
