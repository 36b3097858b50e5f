"""The integer forms the million-customer path uses give exactly the domain's answers:
``FiguresAt`` (lifecycle, tier, recency on epoch micros and cents) against ``customer_figures``, and
quintile cuts from counts (what the database hands over) against cuts from the sorted population."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.events import epoch_micros
from services.segmentation.domain.customers import (
    FiguresAt,
    LifecycleThresholds,
    OrderFact,
    TierThresholds,
    customer_figures,
)
from services.segmentation.domain.rfm import (
    RfmFigures,
    cuts_of,
    cuts_of_counts,
    nth_smallest,
    quintile_ranks,
    rfm_cuts,
)

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

# Order ages with weight on the lifecycle and lookback boundaries, a microsecond either side.
ages = st.one_of(
    st.integers(0, 400 * 86_400_000_000).map(lambda us: timedelta(microseconds=us)),
    st.sampled_from([30, 90, 180, 365]).flatmap(
        lambda days: st.sampled_from([-1, 0, 1]).map(lambda us: days * DAY + timedelta(microseconds=us))),
)
amounts = st.sampled_from(["0.00", "0.01", "999.99", "1999.99", "2000.00", "2000.01", "9999.99", "10000.00"])
thresholds = st.sampled_from([
    (LifecycleThresholds(), TierThresholds()),
    (LifecycleThresholds(7, 60, 120), TierThresholds(Decimal("10.005"), Decimal("1999.995"), Decimal(10000))),
    (LifecycleThresholds(0, 0, 0), TierThresholds(Decimal(0), Decimal("0.01"), Decimal("0.01"))),
])


@settings(max_examples=400)
@given(st.lists(st.tuples(ages, amounts), max_size=5), thresholds)
def test_figures_at_gives_the_lifecycle_tier_and_recency_of_customer_figures(orders, chosen):
    lifecycle, tiers = chosen
    facts = [OrderFact(f"o-{i}", "p", AS_OF - age, Decimal(total), f"e-{i}") for i, (age, total) in enumerate(orders)]
    figures = customer_figures(facts, AS_OF, lifecycle, tiers)
    at = FiguresAt(AS_OF, lifecycle, tiers)
    last_us = None if figures.last_order_at is None else epoch_micros(figures.last_order_at)
    monetary_cents = int(figures.monetary * 100)

    assert at.lifecycle(figures.orders, last_us) == figures.lifecycle
    assert at.tier(monetary_cents) == figures.tier
    if last_us is not None:
        assert at.recency_days(last_us) == figures.recency_days
    assert at.lookback_start_us == epoch_micros(AS_OF - timedelta(days=365))


population = st.lists(st.builds(RfmFigures, recency_days=st.integers(0, 40), frequency=st.integers(1, 6),
                                monetary=st.integers(0, 30).map(Decimal)), min_size=1, max_size=60)


@settings(max_examples=300)
@given(population)
def test_cuts_from_counts_equal_cuts_from_the_sorted_population(members):
    recency_counts, frequency_counts = {}, {}
    for figures in members:
        recency_counts[figures.recency_days] = recency_counts.get(figures.recency_days, 0) + 1
        frequency_counts[figures.frequency] = frequency_counts.get(figures.frequency, 0) + 1
    sorted_cuts = rfm_cuts(members)

    from_counts = cuts_of_counts(recency_counts, frequency_counts, sorted_cuts.monetary)

    assert from_counts == sorted_cuts
    for figures in members:
        assert from_counts.segment_of(figures.recency_days, figures.frequency) == sorted_cuts.score(figures).segment


@given(population)
def test_cuts_without_monetary_still_decide_segments(members):
    full = rfm_cuts(members)
    partial = cuts_of([f.recency_days for f in members], [f.frequency for f in members], None)

    assert partial.monetary == ()
    assert (partial.recency_days, partial.frequency) == (full.recency_days, full.frequency)


def test_quintile_ranks_round_up_and_an_empty_population_has_none():
    assert quintile_ranks(0) == ()
    assert quintile_ranks(1) == (1, 1, 1, 1)
    assert quintile_ranks(10) == (2, 4, 6, 8)
    assert quintile_ranks(11) == (3, 5, 7, 9)


def test_nth_smallest_walks_the_counts_in_value_order():
    counts = {5: 2, 1: 1, 9: 3}  # sorted: 1, 5, 5, 9, 9, 9

    assert nth_smallest(counts, [1, 2, 3, 4, 6]) == (1, 5, 5, 9, 9)
    assert nth_smallest(counts, [1, 4], largest=True) == (9, 5)
