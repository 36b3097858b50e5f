"""Funnel definitions and results, SPEC.md "Definitions" -> "Funnel"."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import groupby
from operator import attrgetter
from typing import Literal, NamedTuple

from services.funnel.domain.facts import EventType, FunnelEvent, History, check_event_type, utc
from services.funnel.domain.stats import median, ratio, total

Unit = Literal["person", "product"]
Breakdown = Literal["source", "category"]
DEFAULT_WINDOW_SECONDS = 7 * 24 * 3600
UNKNOWN_CATEGORY = "(none)"


@dataclass(frozen=True)
class FunnelStep:
    type: EventType
    product_id: str | None = None
    category: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        check_event_type(self.type)


@dataclass(frozen=True)
class FunnelDefinition:
    name: str
    steps: tuple[FunnelStep, ...]
    window_seconds: int = DEFAULT_WINDOW_SECONDS
    unit: Unit = "person"

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a funnel has at least one step")
        if self.window_seconds < 0:
            raise ValueError("window_seconds must be >= 0")
        if self.unit not in ("person", "product"):
            raise ValueError(f"unknown unit {self.unit!r}")


DEFAULT_FUNNEL = FunnelDefinition(
    name="default", steps=(FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("order"))
)


@dataclass(frozen=True)
class FunnelResult:
    counts: tuple[int, ...]
    conversion: tuple[float | None, ...]
    step_conversion: tuple[float | None, ...]
    in_progress: tuple[int, ...]
    median_seconds_to_convert: float | None
    converted_value: Decimal | None
    breakdown: dict[str, FunnelResult] | None = None


def funnel_result(
    definition: FunnelDefinition,
    events: Iterable[FunnelEvent],
    start: datetime,
    end: datetime,
    as_of: datetime,
    breakdown: Breakdown | None = None,
) -> FunnelResult:
    """The funnel over entrants in [start, end), chains known at as_of (SPEC.md "Funnel")."""
    history = History(events, as_of)
    start, end = utc(start), utc(end)
    window = timedelta(seconds=definition.window_seconds)
    journeys = [
        journey
        for (_, product_id), candidates in _candidates(definition, history, start, end + window).items()
        if (journey := _journey(candidates, len(definition.steps), window, start, end, product_id))
        is not None
    ]
    result = _summary(definition, journeys, window, history.as_of)
    if breakdown is None:
        return result
    groups: dict[str, list[_Journey]] = defaultdict(list)
    for journey in journeys:
        groups[_breakdown_value(journey, breakdown, history)].append(journey)
    return replace(
        result,
        breakdown={
            value: _summary(definition, groups[value], window, history.as_of) for value in sorted(groups)
        },
    )


class _Candidate(NamedTuple):
    """An event of one unit together with the steps (0-based) it matches."""

    event: FunnelEvent
    steps: tuple[int, ...]


class _Journey(NamedTuple):
    """One entrant unit: how far its best chain went and how it converted."""

    product_id: str | None
    entry: FunnelEvent
    level: int
    latest_start_at_level: datetime
    fastest_conversion: timedelta | None
    completing_event: FunnelEvent | None


def _candidates(
    definition: FunnelDefinition, history: History, start: datetime, horizon: datetime
) -> dict[tuple[str, str | None], list[_Candidate]]:
    by_unit: dict[tuple[str, str | None], list[_Candidate]] = defaultdict(list)
    # Which steps an event matches depends only on its type, source and products: decide each combination once.
    matching: dict[tuple[str, str, tuple[str, ...]], tuple[int, ...]] = {}
    # Every chain lies in [t(e1), t(e1) + W] with start <= t(e1) < end, so nothing outside [start, end + W)
    # can join one.
    for event in history.events.between(start, horizon):
        if event.type == "order" and not history.counts_as_order(event):
            continue
        # In a product unit the event is about the unit's product alone, filters included.
        for product_id in event.product_ids if definition.unit == "product" else (None,):
            about = (event.type, event.source, event.product_ids if product_id is None else (product_id,))
            if (steps := matching.get(about)) is None:
                steps = matching[about] = tuple(
                    index for index, step in enumerate(definition.steps) if _matches(step, *about, history)
                )
            if steps:
                by_unit[event.person_key, product_id].append(_Candidate(event, steps))
    return by_unit


def _matches(
    step: FunnelStep, event_type: str, source: str, products: tuple[str, ...], history: History
) -> bool:
    """Whether an event of this type and source about these products matches the step (SPEC.md "Funnel")."""
    return (
        event_type == step.type
        and (step.source is None or source == step.source)
        and (step.product_id is None or step.product_id in products)
        and (step.category is None or any(history.category_of(p) == step.category for p in products))
    )


def _journey(
    candidates: Sequence[_Candidate],
    step_count: int,
    window: timedelta,
    start: datetime,
    end: datetime,
    product_id: str | None,
) -> _Journey | None:
    """Exact level, fastest conversion and earliest completing event of one unit, or None if it never entered.

    Chains are grown instant by instant. Between instants, of all chains that reached a step only the one
    with the latest start matters: it may go on wherever another may, and its window closes last. Within one
    instant the order of events is free, so how many further steps a chain can take there is a matching of
    consecutive steps to distinct events, not an earliest-match greedy choice.
    """
    latest_start: list[datetime | None] = [None] * (step_count + 1)
    entry: FunnelEvent | None = None
    fastest: timedelta | None = None
    completing: FunnelEvent | None = None
    for at, moment in groupby(candidates, key=_instant):
        # Chains may start here (when in range) or go on from each level still inside its window. Starts only
        # get earlier as levels rise, so listing origins by level lists them from the latest start down.
        origins = [(0, at)] if start <= at < end else []
        origins += [
            (done, started)
            for done, started in enumerate(latest_start[1:step_count], start=1)
            if started is not None and at <= started + window
        ]
        if not origins:
            continue
        simultaneous = list(moment)
        reached: dict[int, datetime] = {}
        for done, started in origins:
            for level in range(done + 1, done + _steps_taken(simultaneous, done, step_count) + 1):
                reached.setdefault(level, started)
        for level, started in reached.items():
            previous = latest_start[level]
            latest_start[level] = started if previous is None else max(previous, started)
        if entry is None and 1 in reached:
            entry = next(c.event for c in simultaneous if 0 in c.steps)
        if step_count in reached:
            elapsed = at - reached[step_count]
            fastest = elapsed if fastest is None else min(fastest, elapsed)
            if completing is None:
                completing = _earliest_completing(simultaneous, origins, step_count)
    if entry is None:
        return None
    level = max(level for level, started in enumerate(latest_start) if started is not None)
    return _Journey(product_id, entry, level, latest_start[level], fastest, completing)


_instant = attrgetter("event.occurred_at")


def _steps_taken(simultaneous: Sequence[_Candidate], done: int, step_count: int) -> int:
    """How many consecutive steps after `done` distinct simultaneous events can take (augmenting paths)."""
    if len(simultaneous) == 1:
        return int(done < step_count and done in simultaneous[0].steps)
    holder: dict[int, int] = {}  # candidate index -> the step it takes

    def take(step: int, tried: set[int]) -> bool:
        for index, candidate in enumerate(simultaneous):
            if step in candidate.steps and index not in tried:
                tried.add(index)
                if index not in holder or take(holder[index], tried):
                    holder[index] = step
                    return True
        return False

    taken = 0
    while done + taken < step_count and take(done + taken, set()):
        taken += 1
    return taken


def _earliest_completing(
    simultaneous: Sequence[_Candidate], origins: Sequence[tuple[int, datetime]], step_count: int
) -> FunnelEvent:
    """The completing event with the smallest event_id among those that can end a chain at this instant."""
    last = step_count - 1
    for candidate in simultaneous:  # already in event_id order
        others = [other for other in simultaneous if other is not candidate]
        if last in candidate.steps and any(
            _steps_taken(others, done, last) >= last - done for done, _ in origins
        ):
            return candidate.event
    raise AssertionError("a completed chain has a completing event")


def _summary(
    definition: FunnelDefinition, journeys: Sequence[_Journey], window: timedelta, as_of: datetime
) -> FunnelResult:
    step_count = len(definition.steps)
    counts = tuple(sum(journey.level >= level for journey in journeys) for level in range(1, step_count + 1))
    converted = [journey for journey in journeys if journey.level == step_count]
    # Units whose window is still open at as_of are converting, not dropped off; converted ones are neither.
    converting = [
        journey
        for journey in journeys
        if journey.level < step_count and journey.latest_start_at_level + window > as_of
    ]
    return FunnelResult(
        counts=counts,
        conversion=tuple(ratio(count, counts[0]) for count in counts),
        step_conversion=(None, *(ratio(counts[j], counts[j - 1]) for j in range(1, step_count))),
        in_progress=tuple(sum(j.level == level for j in converting) for level in range(1, step_count + 1)),
        median_seconds_to_convert=median(journey.fastest_conversion.total_seconds() for journey in converted),
        converted_value=(
            total(_order_value(journey) for journey in converted)
            if definition.steps[-1].type == "order"
            else None
        ),
    )


def _order_value(journey: _Journey) -> Decimal:
    order = journey.completing_event.order
    return order.amount if journey.product_id is None else order.amount_of(journey.product_id)


def _breakdown_value(journey: _Journey, breakdown: Breakdown, history: History) -> str:
    """The unit's value on its first s1 event in range; an order's category is its first item's."""
    if breakdown == "source":
        return journey.entry.source
    product_id = journey.product_id or next(iter(journey.entry.product_ids), None)
    category = history.category_of(product_id) if product_id is not None else None
    return category if category is not None else UNKNOWN_CATEGORY
