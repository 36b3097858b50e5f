"""Which customers a re-evaluation of everyone's built-in segments has to look at, given the one before.

Between two moments A0 <= A1, a customer's lifecycle stage, tier and RFM segment (SPEC.md "Definitions:
Customers") can differ only if one of these holds, facts unchanged:
- a counted order becomes visible: its time is in (A0, A1];
- a counted order leaves the 365-day lookback (frequency, monetary, RFM population): (A0 - 365d, A1 - 365d];
- "last order within N days" (N = new, active, dormant days) turns false: last order in [A0 - N, A1 - N);
- an R-score boundary passes the last order: recency_days < c holds exactly when last_order > A - c days, so
  with the k-th recency cut c0 at A0 and c1 at A1 the last orders in between change side;
- the person becomes known (first event in (A0, A1]).
The F cuts are compared with frequency, which time changes only through the lookback windows above; when
they move, every customer with a frequency in between changes score and nothing short of everyone will do.
Persons whose facts changed since A0 are the caller's to add.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.segmentation.domain.customers import LOOKBACK, LifecycleThresholds

_MICROSECOND = timedelta(microseconds=1)
DAY_US = timedelta(days=1) // _MICROSECOND
LOOKBACK_US = LOOKBACK // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Round:
    """A re-evaluation of everyone's built-in segments: its moment (epoch µs) and the RFM cuts it decided
    with (``RfmCuts.recency_days`` and ``.frequency``), and the moment of the last round that looked at
    every customer."""

    as_of_us: int
    recency_cuts: tuple[int, ...]
    frequency_cuts: tuple[int, ...]
    complete_as_of_us: int


def order_windows(previous: Round, current: Round,
                  lifecycle: LifecycleThresholds) -> list[tuple[int, int]] | None:
    """Ranges ``(after, until]`` of order times (epoch µs): from ``previous`` to ``current`` (same facts), only
    a customer with a counted order in one of them (or newly known) can change built-in segments.

    None when that cannot be bounded this way (time went back, the F cuts or the number of cuts changed):
    then everyone has to be evaluated.
    """
    before, now = previous.as_of_us, current.as_of_us
    if (now < before or previous.frequency_cuts != current.frequency_cuts
            or len(previous.recency_cuts) != len(current.recency_cuts)):
        return None
    windows = [(before, now), (before - LOOKBACK_US, now - LOOKBACK_US)]
    for days in (lifecycle.new_days, lifecycle.active_days, lifecycle.dormant_days):
        # last >= A - N days, on integers: last > A - N days - 1.
        within = days * DAY_US + 1
        windows.append((before - within, now - within))
    for cut_before, cut_now in zip(previous.recency_cuts, current.recency_cuts, strict=True):
        # recency_days < c  <=>  last_order > A - c days.
        edge_before, edge_now = before - cut_before * DAY_US, now - cut_now * DAY_US
        windows.append((min(edge_before, edge_now), max(edge_before, edge_now)))
    return merged([window for window in windows if window[0] < window[1]])


def merged(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same ranges ``(after, until]``, overlapping ones joined, in order."""
    joined: list[tuple[int, int]] = []
    for after, until in sorted(windows):
        if joined and after <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], until))
        else:
            joined.append((after, until))
    return joined


def moved_ranges(base_us: int, as_of_us: int, lookback_us: int) -> list[tuple[int, int]]:
    """The ranges ``(after, until]`` holding a counted order of every person whose RFM figures at as_of can
    differ from those at base (base <= as_of, facts alike): an order between the two moments (enters), one leaving
    the lookback between them, and a last order that turns one day older: recency_days = (t - last) // day
    differs at base and as_of exactly when base - k days < last <= as_of - k days for some k >= 1."""
    if as_of_us <= base_us:
        return []
    ranges = [(base_us, as_of_us), (base_us - lookback_us, as_of_us - lookback_us)]
    ranges += [(base_us - k * DAY_US, as_of_us - k * DAY_US) for k in range(1, lookback_us // DAY_US + 2)]
    return ranges


def stage_moved_ranges(base_us: int, as_of_us: int, lookback_us: int,
                       lifecycle: LifecycleThresholds) -> list[tuple[int, int]]:
    """The ranges ``(after, until]`` holding a counted order of every known person whose stage or tier at as_of
    can differ from base (base <= as_of, facts alike; persons first seen in between aside): an order in between
    (orders, last order, gmv), one leaving the lookback (gmv), and a last order that passes one of the stage
    thresholds N days: "within N days" is as_of - t <= N days, which differs at base and as_of for
    base - N <= t < as_of - N."""
    if as_of_us <= base_us:
        return []
    ranges = [(base_us, as_of_us), (base_us - lookback_us, as_of_us - lookback_us)]
    for days in (lifecycle.new_days, lifecycle.active_days, lifecycle.dormant_days):
        threshold = days * DAY_US
        ranges.append((base_us - threshold - 1, as_of_us - threshold))
    return ranges
