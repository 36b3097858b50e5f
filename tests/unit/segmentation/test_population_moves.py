"""The population counts moved from one as_of to another through the persons who can have moved
(population_state.py) equal the domain's at the other as_of (SPEC.md "Customers": RFM, lifecycle, tiers); only
persons with an order in the moved ranges can change RFM figures, lifecycle stage or tier between the two moments
(domain/rounds.py); a standing on integers is the domain's figures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.events import epoch_micros
from services.segmentation.adapters.fact_changes import ChangeCursor
from services.segmentation.domain.customers import (
    LOOKBACK,
    FiguresAt,
    LifecycleThresholds,
    OrderFact,
    Standing,
    customer_figures,
)
from services.segmentation.domain.rfm import RfmFigures, rfm_cuts
from services.segmentation.domain.rounds import moved_ranges, stage_moved_ranges
from services.segmentation.population import Thresholds
from services.segmentation.population_state import (
    PopulationCounts,
    moved_monetary,
    moved_population,
    time_moved_ranges,
)

BASE_STEP_US = 60_000_000

GRID = datetime(2026, 1, 1, tzinfo=UTC)
LOOKBACK_US = LOOKBACK // timedelta(microseconds=1)
# Orders near the day boundaries the grid moment and as_of straddle: whole days back, a few seconds either way.
orders = st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0, 1, 2, 30, 180, 364, 365, 366]),
                            st.sampled_from([-61, -60, -1, 0, 1, 29, 30, 59, 60, 61]),
                            st.sampled_from(["0.00", "9.90", "10.00", "99.99", "2000.00"])), max_size=30)


def _facts(drawn: Iterable[tuple[int, int, int, str]]) -> dict[str, list[OrderFact]]:
    by_person: dict[str, list[OrderFact]] = {}
    for n, (person, days, seconds, total) in enumerate(drawn):
        at = GRID - timedelta(days=days, seconds=seconds)
        by_person.setdefault(f"p-{person}", []).append(OrderFact(f"o-{n}", f"p-{person}", at, Decimal(total), f"e-{n}"))
    return by_person


def _population(by_person: dict[str, list[OrderFact]], at: datetime) -> dict[str, RfmFigures]:
    figures = {person: customer_figures(facts, at).rfm_figures for person, facts in by_person.items()}
    return {person: rfm for person, rfm in figures.items() if rfm is not None}


def _cents(figures: RfmFigures) -> tuple[int, int, int]:
    return figures.recency_days, figures.frequency, int(figures.monetary * 100)


def _standings(by_person: dict[str, list[OrderFact]], first_seen: dict[str, int], at: datetime,
               lifecycle: LifecycleThresholds = LifecycleThresholds()) -> dict[str, Standing]:
    figures_at = FiguresAt(at, lifecycle)
    return {person: figures_at.standing(first_seen.get(person), [(epoch_micros(fact.occurred_at), int(fact.total * 100))
                                                                 for fact in facts])
            for person, facts in by_person.items()}


def _counts(standings: Iterable[Standing], at: datetime) -> PopulationCounts:
    listed = list(standings)
    return PopulationCounts(
        as_of_us=epoch_micros(at), cursor=ChangeCursor(0),
        rfm_pairs=Counter((s.rfm[0], s.rfm[1]) for s in listed if s.rfm is not None),
        monetary=moved_monetary(np.array([], dtype=np.int64), [], sorted(s.rfm[2] for s in listed if s.rfm)),
        standings=Counter(s.stage_and_tier for s in listed if s.stage_and_tier is not None))


@settings(max_examples=400)
@given(drawn=orders, later_us=st.integers(-2 * BASE_STEP_US, 2 * BASE_STEP_US),
       first_seen_seconds=st.dictionaries(st.sampled_from([f"p-{n}" for n in range(8)]), st.integers(-90, 90)))
def test_counts_moved_to_another_as_of_through_the_movers_equal_the_domain_there(drawn, later_us,
                                                                                 first_seen_seconds):
    by_person = _facts(drawn)
    first_seen = {person: epoch_micros(GRID) + seconds * 1_000_000 for person, seconds in first_seen_seconds.items()}
    for person in set(by_person) - set(first_seen):  # a buyer is known from their first order at the latest
        first_seen[person] = min(epoch_micros(fact.occurred_at) for fact in by_person[person])
    as_of = GRID + timedelta(microseconds=later_us)
    at_grid, at_as_of = _standings(by_person, first_seen, GRID), _standings(by_person, first_seen, as_of)
    ranges = time_moved_ranges(epoch_micros(GRID), epoch_micros(as_of), Thresholds())
    low, high = sorted((epoch_micros(GRID), epoch_micros(as_of)))
    movers = {person for person, facts in by_person.items()
              if any(after < epoch_micros(fact.occurred_at) <= until for fact in facts for after, until in ranges)}
    movers |= {person for person, seen in first_seen.items() if low < seen <= high}
    everyone = set(by_person) | set(first_seen)

    moved = moved_population(_counts(at_grid.values(), GRID), FiguresAt(as_of), ChangeCursor(0),
                             [at_grid[p] for p in movers if p in at_grid], [at_as_of[p] for p in movers if p in at_as_of])

    expected = _counts((at_as_of[p] for p in everyone if p in at_as_of), as_of)
    assert (moved.rfm_pairs, list(moved.monetary), moved.standings) == (
        expected.rfm_pairs, list(expected.monetary), expected.standings)
    domain = rfm_cuts(list(_population(by_person, as_of).values()))
    cuts = moved.cuts()
    assert (cuts.customers, cuts.recency_days, cuts.frequency) == (domain.customers, domain.recency_days,
                                                                   domain.frequency)
    assert cuts.monetary == tuple(int(m * 100) for m in domain.monetary)


@settings(max_examples=300)
@given(drawn=orders, at_seconds=st.integers(-120, 120), first_seen_seconds=st.one_of(st.none(), st.integers(-400 * 86400, 60)),
       new_days=st.sampled_from([1, 30]), active_days=st.sampled_from([30, 90]), dormant_days=st.sampled_from([180, 365]))
def test_a_standing_on_integers_is_the_domain_figures(drawn, at_seconds, first_seen_seconds, new_days, active_days,
                                                      dormant_days):
    lifecycle = LifecycleThresholds(new_days, active_days, dormant_days)
    at = GRID + timedelta(seconds=at_seconds)
    first_seen = None if first_seen_seconds is None else epoch_micros(GRID) + first_seen_seconds * 1_000_000
    for person, facts in _facts(drawn).items():
        standing = _standings({person: facts}, {} if first_seen is None else {person: first_seen}, at, lifecycle)[person]
        figures = customer_figures(facts, at, lifecycle)
        rfm = figures.rfm_figures
        assert standing.rfm == (None if rfm is None else _cents(rfm))
        known = first_seen is not None and first_seen <= epoch_micros(at)
        assert standing.stage_and_tier == ((figures.lifecycle, figures.tier) if known else None)


@given(values=st.lists(st.integers(0, 50), max_size=40), data=st.data())
def test_moved_monetary_values_are_the_changed_multiset_in_order(values, data):
    removed = data.draw(st.lists(st.sampled_from(values), unique_by=lambda v: v, max_size=len(values))) if values else []
    # Removal of several copies of a value, as many as there are at most.
    removed = [v for v in removed for _ in range(data.draw(st.integers(1, values.count(v))))]
    added = data.draw(st.lists(st.integers(0, 60), max_size=10))
    base = moved_monetary(np.array([], dtype=np.int64), [], values)
    expected = Counter(values)
    expected.subtract(removed)
    expected.update(added)
    assert list(moved_monetary(base, removed, added)) == sorted(expected.elements())
    assert moved_monetary(sorted(values), removed, added) == sorted(expected.elements())


@settings(max_examples=200)
@given(drawn=orders, later_us=st.integers(0, BASE_STEP_US - 1))
def test_whoever_is_outside_the_moved_ranges_has_the_same_rfm_figures_at_both_moments(drawn, later_us):
    by_person = _facts(drawn)
    as_of = GRID + timedelta(microseconds=later_us)
    at_grid, at_as_of = _population(by_person, GRID), _population(by_person, as_of)
    ranges = moved_ranges(epoch_micros(GRID), epoch_micros(as_of), LOOKBACK_US)
    for person, facts in by_person.items():
        if not any(after < epoch_micros(fact.occurred_at) <= until for fact in facts for after, until in ranges):
            assert at_grid.get(person) == at_as_of.get(person)


@settings(max_examples=300)
@given(drawn=orders, later_us=st.integers(0, BASE_STEP_US - 1),
       new_days=st.sampled_from([1, 30]), active_days=st.sampled_from([30, 90]), dormant_days=st.sampled_from([180, 365]))
def test_whoever_is_outside_the_stage_moved_ranges_keeps_stage_and_tier(drawn, later_us, new_days, active_days,
                                                                        dormant_days):
    by_person = _facts(drawn)
    as_of = GRID + timedelta(microseconds=later_us)
    lifecycle = LifecycleThresholds(new_days, active_days, dormant_days)
    ranges = stage_moved_ranges(epoch_micros(GRID), epoch_micros(as_of), LOOKBACK_US, lifecycle)
    for facts in by_person.values():
        before, after = customer_figures(facts, GRID, lifecycle), customer_figures(facts, as_of, lifecycle)
        if not any(after_us < epoch_micros(fact.occurred_at) <= until for fact in facts for after_us, until in ranges):
            assert (before.lifecycle, before.tier) == (after.lifecycle, after.tier)
