"""The RFM cuts at an as_of derived from the population counted at the grid moment below it (rfm_cuts.py) equal
the domain's cuts of the population at that as_of (SPEC.md "Customers": RFM); only persons with an order in the
moved ranges can change RFM figures, lifecycle stage or tier between the two moments (stage_counts.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.events import epoch_micros
from services.segmentation.domain.customers import LOOKBACK, LifecycleThresholds, OrderFact, customer_figures
from services.segmentation.domain.rfm import RfmFigures, rfm_cuts
from services.segmentation.rfm_cuts import BASE_STEP_US, PopulationCounts, moved_cuts, moved_ranges
from services.segmentation.stage_counts import stage_moved_ranges

GRID = datetime(2026, 1, 1, tzinfo=UTC)  # on the grid
assert epoch_micros(GRID) % BASE_STEP_US == 0
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


@settings(max_examples=400)
@given(drawn=orders, later_us=st.integers(0, BASE_STEP_US - 1))
def test_cuts_moved_from_the_grid_moment_equal_the_domain_at_as_of(drawn, later_us):
    by_person = _facts(drawn)
    as_of = GRID + timedelta(microseconds=later_us)
    at_grid, at_as_of = _population(by_person, GRID), _population(by_person, as_of)
    base = PopulationCounts(Counter(f.recency_days for f in at_grid.values()),
                            Counter(f.frequency for f in at_grid.values()),
                            sorted(_cents(f)[2] for f in at_grid.values()))
    ranges = moved_ranges(epoch_micros(GRID), epoch_micros(as_of), LOOKBACK_US)
    movers = {person for person, facts in by_person.items()
              if any(after < epoch_micros(fact.occurred_at) <= until for fact in facts for after, until in ranges)}

    moved = moved_cuts(base, [_cents(at_grid[p]) for p in movers if p in at_grid],
                       [_cents(at_as_of[p]) for p in movers if p in at_as_of])

    expected = rfm_cuts(list(at_as_of.values()))
    assert (moved.customers, moved.recency_days, moved.frequency) == (
        expected.customers, expected.recency_days, expected.frequency)
    assert moved.monetary == tuple(int(m * 100) for m in expected.monetary)


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
