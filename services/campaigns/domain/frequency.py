"""The frequency cap across campaigns: at most N touches per person per D days (SPEC.md "Campaigns", Touches)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `max_touches` touches per person in any `per_days` days, across all campaigns (settings)."""

    max_touches: int
    per_days: int

    def __post_init__(self) -> None:
        if self.max_touches < 1:
            raise ValueError("max_touches must be at least 1")
        if self.per_days < 1:
            raise ValueError("per_days must be at least 1")


def window_start(at: datetime, cap: FrequencyCap) -> datetime:
    """The exclusive start of the cap's window ending at `at`: "the last D days" is (at - D days, at] (SPEC.md)."""
    return at - timedelta(days=cap.per_days)


def suppressed(previous_touch_times: Iterable[datetime], at: datetime, cap: FrequencyCap | None) -> bool:
    """A touch at `at` is suppressed when N earlier touches (sent or due, any campaign) lie in (at - D days, at]."""
    if cap is None:
        return False
    start = window_start(at, cap)
    recent = sum(1 for touched_at in previous_touch_times if start < touched_at <= at)
    return recent >= cap.max_touches
