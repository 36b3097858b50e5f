"""The period an overview compares with, and the change between two values of a KPI."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal


def previous_period(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The range of the same length just before ``[start, end)``: ``[start - (end - start), start)``."""
    return start - (end - start), start


def relative_change(current: float | int | None, previous: float | int | None) -> float | None:
    """(current - previous) / previous; None when either is unknown or the previous value is 0."""
    if current is None or previous is None or previous == 0:
        return None
    # Through Decimal of the JSON text, so that money amounts (exact in cents) subtract exactly.
    return float((Decimal(str(current)) - Decimal(str(previous))) / Decimal(str(previous)))


def changes(current: dict[str, object], previous: dict[str, object]) -> dict[str, float | None]:
    """The relative change of every numeric KPI present in both periods."""
    return {
        name: relative_change(value, previous[name])  # type: ignore[arg-type]
        for name, value in current.items()
        if name in previous and all(v is None or _numeric(v) for v in (value, previous[name]))
    }


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
