"""Customers at ``as_of``: stored facts through the domain functions into figures, scores and segments.

Nothing here is cached: every answer is computed from the facts with ``occurred_at <= as_of`` (SPEC.md
"Definitions"), so late and out-of-order events are exact. The database sums each person's counted
orders in one query; the domain functions turn the sums into figures, scores and segments. Two paths
share those definitions: whole figures (a profile, rule segments) and, for the built-in segments of
every customer, the same definitions on integers (``FiguresAt``), which keeps a million customers cheap.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import epoch_micros, from_epoch_micros
from services.segmentation.adapters.facts import (
    cents_total,
    customer_totals,
    event_type_counts,
    last_seen_at_or_before,
    merged_traits,
    rfm_cut_inputs,
    standing_sums,
)
from services.segmentation.domain.customers import (
    CustomerFigures,
    FiguresAt,
    LifecycleStage,
    LifecycleThresholds,
    MembershipTier,
    OrderTotals,
    TierThresholds,
    figures_from_totals,
)
from services.segmentation.domain.rfm import (
    RfmCuts,
    RfmScore,
    RfmSegment,
    cuts_of,
    cuts_of_counts,
    quintile_ranks,
    rfm_cuts,
)
from services.segmentation.domain.rules import TRAIT_PREFIX, EventWindow, fields_used, matches, rule_figures
from services.segmentation.segments import SegmentDefinition, builtin_ids, builtin_segment_ids


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The settings the customer definitions take (lifecycle days, tier gmv)."""

    lifecycle: LifecycleThresholds = field(default_factory=LifecycleThresholds)
    tiers: TierThresholds = field(default_factory=TierThresholds)

    def at(self, as_of: datetime) -> FiguresAt:
        return FiguresAt(as_of, self.lifecycle, self.tiers)


@dataclass(frozen=True, slots=True)
class Customer:
    """One person at as_of."""

    person_key: str
    figures: CustomerFigures
    first_seen_at: datetime
    last_seen_at: datetime
    acquisition_source: str


@dataclass(frozen=True)
class Population:
    """The customers asked for (every known person when none were named), with the RFM scores of those in
    the RFM population, ranked against the whole of it."""

    as_of: datetime
    customers: dict[str, Customer]
    rfm_scores: dict[str, RfmScore]


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def _cents(amount: Decimal) -> int:
    return int(amount.scaleb(2))


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else from_epoch_micros(micros)


async def population_cuts(connection: AsyncConnection, figures_at: FiguresAt, *, monetary: bool) -> RfmCuts:
    """The whole RFM population's quintile cuts at as_of from counts the database makes; monetary cuts
    (a sort of the population) only when M scores are wanted, in cents."""
    recency_counts: Counter[int] = Counter()
    frequency_counts: Counter[int] = Counter()
    histogram, monetary_values = await rfm_cut_inputs(connection, figures_at.as_of_us, figures_at.lookback_start_us,
                                                      monetary=monetary)
    for recency_days, frequency, customers in histogram:
        recency_counts[recency_days] += customers
        frequency_counts[frequency] += customers
    monetary_cuts: tuple[int, ...] = ()
    if monetary:
        monetary_cuts = tuple(monetary_values[rank] for rank in quintile_ranks(sum(recency_counts.values())))
    return cuts_of_counts(recency_counts, frequency_counts, monetary_cuts)


async def load_population(connection: AsyncConnection, as_of: datetime, thresholds: Thresholds,
                          persons: Collection[str] | None = None, *, cuts: RfmCuts | None = None) -> Population:
    """Whole figures and RFM scores of the named persons (or everyone) at as_of; named persons are ranked by
    ``cuts`` when given (the whole population's at as_of, monetary in cents)."""
    figures_at = thresholds.at(as_of)
    as_of_us = figures_at.as_of_us
    rows = await customer_totals(connection, as_of_us, figures_at.lookback_start_us, persons)
    stale = [row.person_key for row in rows if row.last_seen_us > as_of_us]
    last_seen = await last_seen_at_or_before(connection, as_of_us, stale) if stale else {}
    customers = {}
    rfm_population = {}
    for row in rows:
        totals = OrderTotals(0, Decimal(0), None, None, 0, Decimal(0), 0) if row.orders is None else OrderTotals(
            orders=row.orders, gmv=_money(cents_total(row.gmv_high, row.gmv_low)),
            first_order_at=_moment(row.first_order_us), last_order_at=_moment(row.last_order_us),
            frequency=row.frequency, monetary=_money(cents_total(row.monetary_high, row.monetary_low)),
            repeat_orders_90d=row.repeat_orders_90d,
        )
        figures = figures_from_totals(totals, as_of, thresholds.lifecycle, thresholds.tiers)
        person = row.person_key
        customers[person] = Customer(
            person_key=person, figures=figures, first_seen_at=from_epoch_micros(row.first_seen_us),
            last_seen_at=from_epoch_micros(last_seen.get(person, row.last_seen_us)),
            acquisition_source=row.acquisition_source,
        )
        rfm_figures = figures.rfm_figures
        if rfm_figures is not None:
            rfm_population[person] = rfm_figures
    if persons is None:
        cuts = rfm_cuts(rfm_population.values())
        scores = {person: cuts.score(figures) for person, figures in rfm_population.items()}
    else:
        # The named persons are ranked against everyone: the database hands over counts and cut values.
        if cuts is None:
            cuts = await population_cuts(connection, figures_at, monetary=True)
        scores = {person: cuts.score_values(figures.recency_days, figures.frequency, _cents(figures.monetary))
                  for person, figures in rfm_population.items()}
    return Population(as_of=as_of, customers=customers, rfm_scores=scores)


# (person_key, built-in segment ids at as_of (none when unknown then), membership key as stored or None).
# A plain tuple: a million of them are made per evaluation.
Standing = tuple[str, tuple[str, ...], str | None]


async def builtin_memberships(connection: AsyncConnection, as_of: datetime, thresholds: Thresholds,
                              persons: Collection[str] | None = None, *,
                              stored_segments: bool = False) -> list[Standing]:
    """Built-in segments of the named persons (or everyone) at as_of, from integer sums (no whole figures).

    With ``stored_segments``, also the stored membership, and persons with one who are unknown at as_of.
    """
    figures_at = thresholds.at(as_of)
    recency_days, lifecycle, tier = figures_at.recency_days, figures_at.lifecycle, figures_at.tier
    # First what needs no ranking, while the rows arrive; RFM segments once the cuts are known.
    decided: list[tuple[str, LifecycleStage, tuple[int, int] | None, MembershipTier | None, str | None]] = []
    unknown: list[Standing] = []
    recencies: list[int] = []
    frequencies: list[int] = []
    async for part in standing_sums(connection, figures_at.as_of_us, figures_at.lookback_start_us, persons,
                                    stored_segments=stored_segments):
        for person, orders, last, frequency, monetary_high, monetary_low, known, stored in part:
            if not known:
                unknown.append((person, (), stored))
                continue
            pair = None
            if frequency:
                pair = (recency_days(last), frequency)
                recencies.append(pair[0])
                frequencies.append(frequency)
            monetary = cents_total(monetary_high, monetary_low) or 0
            decided.append((person, lifecycle(orders or 0, last), pair, tier(monetary), stored))
    if persons is None:
        cuts = cuts_of(recencies, frequencies, None)
    else:
        cuts = await population_cuts(connection, figures_at, monetary=False)
    # A million customers fall into a few thousand (recency, frequency) pairs and a few dozen id lists.
    segments: dict[tuple[int, int], RfmSegment] = {}
    id_lists: dict[tuple[LifecycleStage, RfmSegment | None, MembershipTier | None], tuple[str, ...]] = {}
    standings = unknown
    for person, stage, pair, membership_tier, stored in decided:
        rfm_segment = None
        if pair is not None:
            rfm_segment = segments.get(pair)
            if rfm_segment is None:
                rfm_segment = segments[pair] = cuts.segment_of(*pair)
        standing = (stage, rfm_segment, membership_tier)
        ids = id_lists.get(standing)
        if ids is None:
            ids = id_lists[standing] = tuple(builtin_ids(*standing))
        standings.append((person, ids, stored))
    return standings


async def load_event_counts(connection: AsyncConnection, as_of: datetime, windows: Iterable[EventWindow],
                            persons: Collection[str] | None = None) -> dict[str, dict[EventWindow, int]]:
    """Per person, events of a type in the last N days: (as_of - N days, as_of]; orders are counted orders."""
    counts: dict[str, dict[EventWindow, int]] = defaultdict(dict)
    for window in set(windows):
        after = as_of - timedelta(days=window.days)
        found = await event_type_counts(connection, window.type, epoch_micros(after), epoch_micros(as_of), persons)
        for person, count in found.items():
            counts[person][window] = count
    return counts


@dataclass
class Evaluation:
    """Who is in which segment at as_of, with what was loaded to decide it."""

    population: Population
    traits: dict[str, dict[str, Any]] = field(default_factory=dict)
    memberships: dict[str, set[str]] = field(default_factory=dict)


async def evaluate_segments(
    connection: AsyncConnection, as_of: datetime, thresholds: Thresholds, rule_segments: Sequence[SegmentDefinition],
    persons: Collection[str] | None = None, *, always_load_traits: bool = False, cuts: RfmCuts | None = None,
) -> Evaluation:
    """Built-in and rule segment membership of the named persons (or everyone) at as_of, from whole figures."""
    population = await load_population(connection, as_of, thresholds, persons, cuts=cuts)
    used = frozenset().union(*(fields_used(segment.rule) for segment in rule_segments if segment.rule is not None))
    windows = [item for item in used if isinstance(item, EventWindow)]
    needs_traits = always_load_traits or any(isinstance(item, str) and item.startswith(TRAIT_PREFIX) for item in used)
    scope = list(population.customers) if persons is not None else None
    traits = await merged_traits(connection, epoch_micros(as_of), scope) if needs_traits else {}
    counts = await load_event_counts(connection, as_of, windows, scope) if windows else {}
    # Rules over a million customers take seconds of CPU: in a worker thread, the event loop keeps serving
    # HTTP and the consumer meanwhile (the data is only read, and nothing else touches it until it returns).
    memberships = await asyncio.to_thread(decide_memberships, population, rule_segments, traits, counts)
    return Evaluation(population=population, traits=traits, memberships=memberships)


def decide_memberships(population: Population, rule_segments: Sequence[SegmentDefinition],
                       traits: Mapping[str, Mapping[str, Any]],
                       counts: Mapping[str, Mapping[EventWindow, int]]) -> dict[str, set[str]]:
    """Built-in and rule segment ids of every customer of ``population``."""
    memberships = {}
    for person, customer in population.customers.items():
        score = population.rfm_scores.get(person)
        members = set(builtin_segment_ids(customer.figures, score))
        if rule_segments:
            figures = rule_profile(customer, score, traits.get(person, {}))
            person_counts = counts.get(person, {})
            members.update(segment.segment_id for segment in rule_segments
                           if segment.rule is not None and matches(segment.rule, figures, person_counts))
        memberships[person] = members
    return memberships


def rule_profile(customer: Customer, score: RfmScore | None, traits: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the rule language reads for one customer."""
    return rule_figures(customer.figures, score, first_seen_at=customer.first_seen_at,
                        last_seen_at=customer.last_seen_at, acquisition_source=customer.acquisition_source,
                        traits=traits)
