"""Pydantic models for Starex API payloads, deliberately lenient about Starex's quirks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date as calendar_date
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

logger = logging.getLogger("bot.starex")

_M = TypeVar("_M", bound=BaseModel)

# Times outside these years are garbage (0001-01-01, 9999-12-31 placeholders): moving
# them between zones overflows the calendar, and no parcel changed status then.
EARLIEST = datetime(2000, 1, 1)
LATEST = datetime(2100, 1, 1)
# Kilograms; outside these a number is a placeholder or a unit mix-up, not a parcel.
MIN_WEIGHT, MAX_WEIGHT = 0.001, 100_000.0
# Status codes are below this, in webhooks and from the API alike; a larger one would
# not fit the database.
STATE_CODE_LIMIT = 10**9
StateCode = Annotated[int, Field(ge=0, lt=STATE_CODE_LIMIT)]


def plausible(moment: datetime) -> bool:
    """A naive time within the years a parcel can have changed status."""
    return EARLIEST <= moment < LATEST


def _naive_time(value: object, info: ValidationInfo) -> datetime | None:
    """Starex sends naive "YYYY-MM-DD HH:MM:SS" in its own zone; callers rely on naive
    times in that zone. A time with an offset is moved into the zone given as the
    validation context's "zone" (as the webhook does); anything else becomes None."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is not None:
        zone = (info.context or {}).get("zone")
        if zone is None or not plausible(parsed.replace(tzinfo=None)):
            return None
        parsed = parsed.astimezone(zone).replace(tzinfo=None)
    return parsed if plausible(parsed) else None


def _text(value: object) -> str | None:
    """Starex's text fields, leniently: a number is written out, anything else (a list,
    an object) is no text rather than a reason to drop the whole trace."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def valid_items(
    model: type[_M], items: Iterable[object], context: dict[str, Any] | None = None
) -> list[_M]:
    """Validate each item, dropping (and logging) the malformed ones instead of failing all."""
    result = []
    for index, item in enumerate(items):
        try:
            result.append(model.model_validate(item, context=context))
        except ValidationError:
            logger.warning("Dropped malformed Starex %s at index %d", model.__name__, index)
    return result


class State(BaseModel):
    code: StateCode
    name: str | None = None
    advanced: str | None = None

    _texts = field_validator("name", "advanced", mode="before")(_text)


class TraceStep(BaseModel):
    code: StateCode
    name: str | None = None
    # The trace endpoint spells it "advansed"; the dictionary spells it "advanced".
    advanced: str | None = Field(
        default=None, validation_alias=AliasChoices("advansed", "advanced")
    )
    statetime: datetime | None = None

    _texts = field_validator("name", "advanced", mode="before")(_text)

    @field_validator("statetime", mode="before")
    @classmethod
    def _parse_statetime(cls, value: object, info: ValidationInfo) -> datetime | None:
        return _naive_time(value, info)


class Trace(BaseModel):
    barcode: str
    date: datetime | calendar_date | None = None
    weight: float | None = None
    recipient: str | None = None
    steps: list[TraceStep] = Field(
        default_factory=list, validation_alias=AliasChoices("trace", "steps")
    )

    _texts = field_validator("recipient", mode="before")(_text)

    @field_validator("date", mode="before")
    @classmethod
    def _parse_date(cls, value: object, info: ValidationInfo) -> datetime | calendar_date | None:
        parsed = _naive_time(value, info)
        if parsed is not None and isinstance(value, str) and len(value.strip()) <= 10:
            return parsed.date()  # a bare day: not shown with an invented 00:00
        return parsed

    @field_validator("weight", mode="before")
    @classmethod
    def _parse_weight(cls, value: object) -> float | None:
        if isinstance(value, str):
            value = value.strip().replace(",", ".")
        try:
            weight = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return weight if MIN_WEIGHT <= weight < MAX_WEIGHT else None  # NaN fails both

    @field_validator("steps", mode="before")
    @classmethod
    def _drop_bad_steps(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return []
        if isinstance(value, list):
            return valid_items(TraceStep, value, info.context)
        return value  # not a list: let pydantic reject it
