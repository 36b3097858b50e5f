"""The fast scorer against a direct O(N^2) transcription of SPEC.md Customers, RFM."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from math import floor

from hypothesis import given, settings
from hypothesis import strategies as st

from services.segmentation.domain.customers import OrderFact, customer_figures
from services.segmentation.domain.rfm import RfmFigures, score_population

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
DAY_SECONDS = 86_400


def spec_segment(r, f):
    if r <= 2:
        return "hibernating" if f <= 2 else "at_risk" if f <= 4 else "cannot_lose"
    if r == 3 and f <= 2:
        return "about_to_sleep"
    if r == 3 and f == 3:
        return "need_attention"
    if r in (3, 4) and f >= 4:
        return "loyal"
    if r == 4 and f == 1:
        return "promising"
    if r in (4, 5) and f in (2, 3):
        return "potential_loyalist"
    if r == 5 and f == 1:
        return "new"
    assert r == 5 and f >= 4
    return "champion"


def spec_scores(population):
    """Score = 1 + floor(5 x count / N), counting strictly smaller F and M, strictly larger R."""
    n = len(population)
    scores = {}
    for key, c in population.items():
        r = 1 + floor(Fraction(5 * sum(o.recency_days > c.recency_days for o in population.values()), n))
        f = 1 + floor(Fraction(5 * sum(o.frequency < c.frequency for o in population.values()), n))
        m = 1 + floor(Fraction(5 * sum(o.monetary < c.monetary for o in population.values()), n))
        scores[key] = (r, f, m, spec_segment(r, f))
    return scores


def fast_scores(population):
    report = score_population(population)
    return {key: (s.r_score, s.f_score, s.m_score, s.segment) for key, s in report.scores.items()}


figures_strategy = st.builds(
    RfmFigures,
    recency_days=st.integers(0, 364),
    frequency=st.integers(1, 8),
    monetary=st.sampled_from(["0.00", "9.90", "99", "99.00", "1999.99", "2000"]).map(Decimal),
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(min_size=1, max_size=4), figures_strategy, max_size=40))
def test_fast_scores_equal_the_spec_transcription(population):
    report = score_population(population)

    assert fast_scores(population) == spec_scores(population)
    assert sum(report.segment_counts.values()) == sum(report.cell_counts.values()) == len(population)


# Order times as seconds before as_of, with weight on the day and lookback edges; negative is after as_of.
seconds_before = st.one_of(
    st.integers(-3 * DAY_SECONDS, 500 * DAY_SECONDS),
    st.sampled_from([0, 1, DAY_SECONDS, 365 * DAY_SECONDS - 1, 365 * DAY_SECONDS, -1]),
    st.integers(0, 30).map(lambda days: days * DAY_SECONDS),
)
orders_strategy = st.lists(
    st.tuples(seconds_before, st.sampled_from(["10", "10.00", "25.50", "300"])), max_size=5
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(min_size=1, max_size=4), orders_strategy, max_size=30))
def test_rfm_from_orders_equals_the_spec_transcription(orders_by_person):
    population = {}
    for person, orders in orders_by_person.items():
        facts = [
            OrderFact(f"{person}-{i}", person, AS_OF - timedelta(seconds=s), Decimal(total), f"e{i}")
            for i, (s, total) in enumerate(orders)
        ]
        rfm_figures = customer_figures(facts, AS_OF).rfm_figures
        if rfm_figures is not None:
            population[person] = rfm_figures

    spec_population = {}
    for person, orders in orders_by_person.items():
        lookback = [(s, Decimal(total)) for s, total in orders if 0 <= s < 365 * DAY_SECONDS]
        if lookback:
            spec_population[person] = RfmFigures(
                recency_days=min(s for s, _ in lookback) // DAY_SECONDS,
                frequency=len(lookback),
                monetary=sum(total for _, total in lookback),
            )

    assert population == spec_population
    assert fast_scores(population) == spec_scores(spec_population)
