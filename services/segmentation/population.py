"""Customers at ``as_of``: stored facts through the domain functions into figures, scores and segments.

Nothing here is cached or incrementally maintained: every answer is computed from the facts with
``occurred_at <= as_of`` (SPEC.md "Definitions"), so late and out-of-order events are exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import epoch_micros, from_epoch_micros
from services.segmentation.adapters.facts import (
    completed_order_records,
    event_type_counts,
    known_profiles,
    last_seen_at_or_before,
    merged_traits,
)
from services.segmentation.domain.customers import (
    LOOKBACK,
    CustomerFigures,
    LifecycleThresholds,
    OrderFact,
    TierThresholds,
    counted_orders,
    customer_figures,
)
from services.segmentation.domain.rfm import RfmReport, RfmScore, score_population
from services.segmentation.domain.rules import TRAIT_PREFIX, EventWindow, fields_used, matches, rule_figures
from services.segmentation.segments import SegmentDefinition, builtin_segment_ids


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The settings the customer definitions take (lifecycle days, tier gmv)."""

    lifecycle: LifecycleThresholds = field(default_factory=LifecycleThresholds)
    tiers: TierThresholds = field(default_factory=TierThresholds)


@dataclass(frozen=True, slots=True)
class Customer:
    """One person at as_of."""

    person_key: str
    figures: CustomerFigures
    orders: tuple[OrderFact, ...]
    first_seen_at: datetime
    last_seen_at: datetime
    acquisition_source: str


@dataclass(frozen=True)
class Population:
    """The customers asked for (every known person when none were named) and the whole RFM population's scores."""

    as_of: datetime
    customers: dict[str, Customer]
    rfm: RfmReport


def _by_person(facts: Iterable[OrderFact]) -> dict[str, list[OrderFact]]:
    grouped: dict[str, list[OrderFact]] = defaultdict(list)
    for fact in facts:
        grouped[fact.person_key].append(fact)
    return grouped


async def load_population(connection: AsyncConnection, as_of: datetime, thresholds: Thresholds,
                          persons: Collection[str] | None = None) -> Population:
    """Figures of the named persons (or everyone) and RFM scores of everyone, at as_of."""
    as_of_us = epoch_micros(as_of)
    profiles = await known_profiles(connection, as_of_us, persons)
    lookback_start = as_of - LOOKBACK
    if persons is None:
        facts = counted_orders(await completed_order_records(connection, as_of_us))
        lookback_facts = [fact for fact in facts if fact.occurred_at > lookback_start]
    else:
        facts = counted_orders(await completed_order_records(connection, as_of_us, persons=list(profiles)))
        # RFM scores rank a customer among all others: their lookback orders are needed too.
        lookback_records = await completed_order_records(
            connection, as_of_us, completed_since_us=epoch_micros(lookback_start)
        )
        lookback_facts = [fact for fact in counted_orders(lookback_records) if fact.occurred_at > lookback_start]
    rfm_population = {}
    for person, orders in _by_person(lookback_facts).items():
        rfm_figures = customer_figures(orders, as_of).rfm_figures
        if rfm_figures is not None:
            rfm_population[person] = rfm_figures

    orders_of = _by_person(facts)
    stale = [person for person, profile in profiles.items() if profile.last_seen_us > as_of_us]
    last_seen = await last_seen_at_or_before(connection, as_of_us, stale) if stale else {}
    customers = {}
    for person, profile in profiles.items():
        orders = tuple(orders_of.get(person, ()))
        customers[person] = Customer(
            person_key=person,
            figures=customer_figures(orders, as_of, thresholds.lifecycle, thresholds.tiers),
            orders=orders,
            first_seen_at=from_epoch_micros(profile.first_seen_us),
            last_seen_at=from_epoch_micros(last_seen.get(person, profile.last_seen_us)),
            acquisition_source=profile.acquisition_source,
        )
    return Population(as_of=as_of, customers=customers, rfm=score_population(rfm_population))


async def load_event_counts(connection: AsyncConnection, population: Population, windows: Iterable[EventWindow],
                            persons: Collection[str] | None = None) -> dict[str, dict[EventWindow, int]]:
    """Per person, events of a type in the last N days: (as_of - N days, as_of].

    For ``order`` the count is of counted orders (an order_id once, at its earliest completed event),
    the definition every other order figure uses.
    """
    as_of = population.as_of
    counts: dict[str, dict[EventWindow, int]] = defaultdict(dict)
    for window in set(windows):
        after = as_of - timedelta(days=window.days)
        if window.type == "order":
            for person, customer in population.customers.items():
                counts[person][window] = sum(1 for o in customer.orders if after < o.occurred_at <= as_of)
            continue
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
    persons: Collection[str] | None = None, *, always_load_traits: bool = False,
) -> Evaluation:
    """Built-in and rule segment membership of the named persons (or everyone) at as_of."""
    population = await load_population(connection, as_of, thresholds, persons)
    used = frozenset().union(*(fields_used(segment.rule) for segment in rule_segments if segment.rule is not None))
    windows = [item for item in used if isinstance(item, EventWindow)]
    needs_traits = always_load_traits or any(isinstance(item, str) and item.startswith(TRAIT_PREFIX) for item in used)
    scope = list(population.customers) if persons is not None else None
    traits = await merged_traits(connection, epoch_micros(as_of), scope) if needs_traits else {}
    counts = await load_event_counts(connection, population, windows, scope) if windows else {}
    memberships = {}
    for person, customer in population.customers.items():
        score = population.rfm.scores.get(person)
        members = set(builtin_segment_ids(customer.figures, score))
        if rule_segments:
            figures = rule_profile(customer, score, traits.get(person, {}))
            person_counts = counts.get(person, {})
            members.update(segment.segment_id for segment in rule_segments
                           if segment.rule is not None and matches(segment.rule, figures, person_counts))
        memberships[person] = members
    return Evaluation(population=population, traits=traits, memberships=memberships)


def rule_profile(customer: Customer, score: RfmScore | None, traits: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the rule language reads for one customer."""
    return rule_figures(customer.figures, score, first_seen_at=customer.first_seen_at,
                        last_seen_at=customer.last_seen_at, acquisition_source=customer.acquisition_source,
                        traits=traits)
