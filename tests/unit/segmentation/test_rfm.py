from collections import Counter
from decimal import Decimal
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.segmentation.domain.rfm import (
    RfmFigures,
    RfmScore,
    RfmSegment,
    rfm_counts,
    rfm_segment,
    score_population,
)

# The SPEC.md table written out cell by cell: rows R score 1..5, columns F score 1..5.
HIB, RISK, LOSE = RfmSegment.HIBERNATING, RfmSegment.AT_RISK, RfmSegment.CANNOT_LOSE
SLEEP, ATTN, LOYAL = RfmSegment.ABOUT_TO_SLEEP, RfmSegment.NEED_ATTENTION, RfmSegment.LOYAL
PROM, POT, NEW, CHAMP = (
    RfmSegment.PROMISING,
    RfmSegment.POTENTIAL_LOYALIST,
    RfmSegment.NEW,
    RfmSegment.CHAMPION,
)
GRID = {
    1: [HIB, HIB, RISK, RISK, LOSE],
    2: [HIB, HIB, RISK, RISK, LOSE],
    3: [SLEEP, SLEEP, ATTN, LOYAL, LOYAL],
    4: [PROM, POT, POT, LOYAL, LOYAL],
    5: [NEW, POT, POT, CHAMP, CHAMP],
}


def customer(recency_days=10, frequency=1, monetary="100"):
    return RfmFigures(recency_days, frequency, Decimal(monetary))


def scores_of(population):
    report = score_population(population)
    return {key: (s.r_score, s.f_score, s.m_score) for key, s in report.scores.items()}


@pytest.mark.parametrize(("r_score", "f_score"), list(product(range(1, 6), range(1, 6))))
def test_every_cell_maps_to_its_segment_in_the_spec_table(r_score, f_score):
    assert rfm_segment(r_score, f_score) == GRID[r_score][f_score - 1]


def test_every_segment_owns_at_least_one_cell():
    assert {segment for row in GRID.values() for segment in row} == set(RfmSegment)


def test_a_lone_customer_scores_one_everywhere_and_is_hibernating():
    report = score_population({"alice": customer()})

    assert report.scores == {"alice": RfmScore(1, 1, 1, RfmSegment.HIBERNATING)}


def test_equal_customers_all_score_one():
    population = {f"c{i}": customer(30, 2, "50.00") for i in range(7)}

    assert set(scores_of(population).values()) == {(1, 1, 1)}


def test_ten_distinct_values_fall_two_to_a_quintile():
    population = {f"c{i}": customer(recency_days=i, frequency=i + 1, monetary=str(i)) for i in range(10)}

    scores = scores_of(population)

    assert [scores[f"c{i}"][1] for i in range(10)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [scores[f"c{i}"][2] for i in range(10)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [scores[f"c{i}"][0] for i in range(10)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_tied_values_share_the_score_of_the_values_strictly_smaller():
    frequencies = {"a": 1, "b": 1, "c": 1, "d": 2, "e": 3}
    population = {key: customer(frequency=f) for key, f in frequencies.items()}

    scores = scores_of(population)

    # 1 + floor(5 * smaller / 5): three ones have 0 below, the two has 3, the three has 4.
    assert {key: s[1] for key, s in scores.items()} == {"a": 1, "b": 1, "c": 1, "d": 4, "e": 5}


def test_recency_scores_count_customers_with_strictly_more_days():
    days = {"a": 0, "b": 10, "c": 10, "d": 100, "e": 300}
    population = {key: customer(recency_days=d) for key, d in days.items()}

    scores = scores_of(population)

    assert {key: s[0] for key, s in scores.items()} == {"a": 5, "b": 3, "c": 3, "d": 2, "e": 1}


def test_monetary_ties_compare_amounts_not_their_notation():
    population = {
        "a": customer(monetary="100"),
        "b": customer(monetary="100.00"),
        "c": customer(monetary="99.99"),
    }

    scores = scores_of(population)

    assert (scores["a"][2], scores["b"][2], scores["c"][2]) == (2, 2, 1)


def test_segment_follows_r_and_f_scores_not_m():
    population = {
        "champion": customer(recency_days=1, frequency=9, monetary="1"),
        "lapsed": customer(recency_days=300, frequency=1, monetary="9000"),
    } | {f"middling{i}": customer(recency_days=100, frequency=2, monetary="50") for i in range(3)}

    report = score_population(population)

    assert report.scores["champion"] == RfmScore(5, 5, 1, RfmSegment.CHAMPION)
    assert report.scores["lapsed"] == RfmScore(1, 1, 5, RfmSegment.HIBERNATING)


def test_report_counts_every_segment_and_cell_including_empty_ones():
    population = {"a": customer(1, 9), "b": customer(300, 1), "c": customer(300, 1)}
    # a: 2 of 3 customers below it on F and above it on R, so 1 + floor(5 * 2 / 3) = 4 on both.

    report = score_population(population)

    assert report.segment_counts == {segment: 0 for segment in RfmSegment} | {
        RfmSegment.LOYAL: 1,
        RfmSegment.HIBERNATING: 2,
    }
    assert len(report.cell_counts) == 25
    assert {cell: n for cell, n in report.cell_counts.items() if n} == {(4, 4): 1, (1, 1): 2}


def test_an_empty_population_has_zero_counts():
    report = score_population({})

    assert report.scores == {}
    assert sum(report.segment_counts.values()) == sum(report.cell_counts.values()) == 0


def test_customers_without_an_order_in_the_lookback_are_refused():
    with pytest.raises(ValueError, match="only customers with a completed order in the lookback"):
        score_population({"a": customer(frequency=0)})


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 12)), max_size=60))
def test_counts_from_the_recency_frequency_histogram_are_those_of_scoring_every_customer(pairs):
    population = {f"c-{n}": customer(recency, frequency) for n, (recency, frequency) in enumerate(pairs)}
    histogram = [(recency, frequency, customers) for (recency, frequency), customers in Counter(pairs).items()]

    counts, report = rfm_counts(histogram), score_population(population)

    assert counts.customers == len(report.scores)
    assert counts.segment_counts == report.segment_counts
    assert counts.cell_counts == report.cell_counts
