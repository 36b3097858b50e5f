import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.campaigns.domain.statistics import (
    insufficient_data,
    prob_to_beat,
    srm,
    srm_flagged,
    two_proportion,
    welch,
)

Z = 1.959964


@st.composite
def arm_pairs(draw, max_n=5000):
    c_n = draw(st.integers(1, max_n))
    v_n = draw(st.integers(1, max_n))
    return draw(st.integers(0, c_n)), c_n, draw(st.integers(0, v_n)), v_n


def test_two_proportion_matches_the_openstax_hives_example():
    # OpenStax Introductory Statistics, "Comparing Two Independent Population Proportions": medication A 20 of 200,
    # medication B 12 of 200, pooled proportion 0.08, difference 0.04, two-tailed p-value = 0.1404.
    lift_abs, lift_rel, p_value, _ = two_proportion(12, 200, 20, 200)

    assert lift_abs == pytest.approx(0.04)
    assert lift_rel == pytest.approx(0.04 / 0.06)
    assert round(p_value, 4) == 0.1404


@given(arm_pairs())
def test_the_z_test_p_value_is_twice_the_normal_tail_of_the_pooled_statistic(pair):
    c_conv, c_n, v_conv, v_n = pair
    pooled = (c_conv + v_conv) / (c_n + v_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / c_n + 1 / v_n))
    assume(se > 0)
    z = (v_conv / v_n - c_conv / c_n) / se

    assert two_proportion(*pair).p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9, abs=1e-300)


@given(arm_pairs())
def test_the_interval_is_the_unpooled_wald_interval_with_z_1_959964_not_clipped(pair):
    c_conv, c_n, v_conv, v_n = pair
    rate_c, rate_v = c_conv / c_n, v_conv / v_n
    half = Z * math.sqrt(rate_c * (1 - rate_c) / c_n + rate_v * (1 - rate_v) / v_n)

    low, high = two_proportion(*pair).ci95

    assert low == pytest.approx(rate_v - rate_c - half, abs=1e-12)
    assert high == pytest.approx(rate_v - rate_c + half, abs=1e-12)


def test_the_wald_interval_is_not_clipped_to_possible_differences():
    _, high = two_proportion(1, 3, 3, 3).ci95

    assert high == pytest.approx(2 / 3 + Z * math.sqrt((1 / 3) * (2 / 3) / 3))
    assert high > 1


def test_a_zero_control_rate_has_no_relative_lift_and_equal_extremes_no_p_value():
    assert two_proportion(0, 100, 3, 100).lift_rel is None
    assert two_proportion(0, 100, 0, 100).p_value is None
    assert two_proportion(100, 100, 50, 50).p_value is None


def test_an_empty_arm_gives_no_rate_figures():
    assert two_proportion(0, 0, 5, 10) == (None, None, None, None)


revenues = st.lists(
    st.one_of(st.just(Decimal(0)), st.decimals(min_value=0, max_value=Decimal("100000"), places=2)),
    min_size=2,
    max_size=60,
)


def sufficient(values):
    with localcontext() as context:
        context.prec = 100  # exact squares, as the service's integer cents are
        return len(values), sum(values, Decimal(0)), sum((value * value for value in values), Decimal(0))


# scipy warns of its own float cancellation on nearly identical revenues; ours is exact, and the tolerance holds.
@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation")
@settings(max_examples=200)
@given(revenues, revenues)
def test_welch_from_sufficient_statistics_equals_scipy_on_the_raw_per_person_arrays(control, variant):
    control_floats = np.array([float(value) for value in control])
    variant_floats = np.array([float(value) for value in variant])
    # Both variances are 0 exactly when every person of each arm has the same revenue (SPEC: then no test); the
    # floats' variance of equal values can still come out above 0.
    assume(len(set(control)) > 1 or len(set(variant)) > 1)
    expected = scipy.stats.ttest_ind(variant_floats, control_floats, equal_var=False)
    interval = expected.confidence_interval(0.95)

    result = welch(*sufficient(control), *sufficient(variant))

    assert result.diff == pytest.approx(variant_floats.mean() - control_floats.mean(), rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-6, abs=1e-12)
    assert result.df == pytest.approx(float(expected.df), rel=1e-6)
    assert result.ci95[0] == pytest.approx(float(interval.low), rel=1e-6, abs=1e-6)
    assert result.ci95[1] == pytest.approx(float(interval.high), rel=1e-6, abs=1e-6)


def test_welch_keeps_its_precision_when_revenues_are_huge_and_close():
    control = [Decimal("999999999999.99"), Decimal("999999999999.98"), Decimal("999999999999.97")] * 20
    variant = [Decimal("999999999999.99"), Decimal("999999999999.95")] * 30
    expected = scipy.stats.ttest_ind(
        [float(value - Decimal("999999999999")) for value in variant],
        [float(value - Decimal("999999999999")) for value in control],
        equal_var=False,
    )

    result = welch(*sufficient(control), *sufficient(variant))

    assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-6)
    assert result.df == pytest.approx(float(expected.df), rel=1e-6)


def test_welch_gives_no_test_with_fewer_than_two_persons_or_no_variance():
    assert welch(1, 10, 100, 5, 10, 40)[1:] == (None, None, None)
    assert welch(5, 10, 20, 5, 20, 80) == (2.0, None, None, None)  # every person alike in each arm
    assert welch(0, 0, 0, 5, 10, 40) == (None, None, None, None)


@st.composite
def posterior_pairs(draw):
    return draw(arm_pairs(max_n=300))


def exact_prob_to_beat(c_conv, c_n, v_conv, v_n):
    """P(p_B > p_A) for Beta posteriors in closed form (Evan Miller, "Formulas for Bayesian A/B testing")."""
    alpha_a, beta_a = 1 + c_conv, 1 + c_n - c_conv
    alpha_b, beta_b = 1 + v_conv, 1 + v_n - v_conv

    def log_beta(a, b):
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    return sum(
        math.exp(
            log_beta(alpha_a + i, beta_a + beta_b)
            - math.log(beta_b + i)
            - log_beta(1 + i, beta_b)
            - log_beta(alpha_a, beta_a)
        )
        for i in range(alpha_b)
    )


@settings(max_examples=150)
@given(posterior_pairs())
def test_prob_to_beat_equals_the_closed_form_sum(pair):
    assert prob_to_beat(*pair) == pytest.approx(exact_prob_to_beat(*pair), abs=1e-6)


@pytest.mark.parametrize(
    "pair",
    [(0, 0, 0, 0), (10, 100, 12, 100), (30, 1000, 45, 1000), (5, 40, 1, 400), (480, 10_000, 520, 10_000), (0, 3, 200, 200)],
)
def test_prob_to_beat_agrees_with_monte_carlo_draws_of_the_two_posteriors(pair):
    c_conv, c_n, v_conv, v_n = pair
    rng = np.random.default_rng(20261206)
    draws = 400_000
    control = rng.beta(1 + c_conv, 1 + c_n - c_conv, draws)
    variant = rng.beta(1 + v_conv, 1 + v_n - v_conv, draws)
    estimate = float(np.mean(variant > control))
    tolerance = 5 * math.sqrt(max(estimate * (1 - estimate), 1e-6) / draws)

    assert prob_to_beat(*pair) == pytest.approx(estimate, abs=tolerance)


@st.composite
def large_posterior_pairs(draw):
    """Up to ten million assigned per arm; the variant's conversions stay small enough for the closed-form sum."""
    c_n = draw(st.integers(1, 10_000_000))
    v_n = draw(st.integers(1, 10_000_000))
    return draw(st.integers(0, c_n)), c_n, draw(st.integers(0, min(v_n, 2000))), v_n


@settings(max_examples=60, deadline=None)
@given(large_posterior_pairs())
def test_prob_to_beat_equals_the_closed_form_sum_up_to_ten_million_assigned(pair):
    assert prob_to_beat(*pair) == pytest.approx(exact_prob_to_beat(*pair), abs=1e-6)


def test_prob_to_beat_at_ten_million_matches_the_normal_approximation():
    c_conv, v_conv, n = 500_000, 501_000, 10_000_000
    rate_c, rate_v = c_conv / n, v_conv / n
    z = (rate_v - rate_c) / math.sqrt(rate_c * (1 - rate_c) / n + rate_v * (1 - rate_v) / n)

    assert prob_to_beat(c_conv, n, v_conv, n) == pytest.approx(0.5 * math.erfc(-z / math.sqrt(2)), abs=1e-4)


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 5000)), min_size=2, max_size=6))
def test_srm_equals_scipy_chisquare_against_the_configured_splits(arms):
    observed = [count for count, _ in arms]
    splits = [split for _, split in arms]
    assume(sum(observed) > 0)
    expected = [sum(observed) * split / sum(splits) for split in splits]
    reference = scipy.stats.chisquare(observed, expected)

    chi2, p_value = srm(observed, splits)

    assert chi2 == pytest.approx(float(reference.statistic), rel=1e-9, abs=1e-9)
    assert p_value == pytest.approx(float(reference.pvalue), rel=1e-9, abs=1e-12)


def test_srm_leaves_out_arms_with_a_zero_split():
    assert srm([510, 0, 490], [5000, 0, 5000]) == pytest.approx(srm([510, 490], [5000, 5000]))


def test_srm_flags_a_mismatch_only_below_one_in_a_thousand():
    _, clear = srm([5000, 5000], [5000, 5000])
    _, skewed = srm([5200, 4800], [5000, 5000])  # chi2 = 16, p ~ 6e-5

    assert not srm_flagged(clear)
    assert srm_flagged(skewed)
    assert not srm_flagged(0.001)
    assert srm_flagged(0.000999)
    assert not srm_flagged(None)


def test_srm_has_nothing_to_test_without_assignments_or_a_second_arm():
    assert srm([0, 0], [5000, 5000]) == (None, None)
    assert srm([100], [10_000]) == (None, None)


@pytest.mark.parametrize(
    ("c_n", "c_conv", "v_n", "v_conv", "insufficient"),
    [(50, 5, 50, 5, False), (49, 5, 50, 5, True), (50, 5, 49, 5, True), (50, 4, 50, 5, True), (50, 5, 500, 4, True)],
)
def test_insufficient_data_below_fifty_assigned_or_five_conversions_in_either_arm(c_n, c_conv, v_n, v_conv, insufficient):
    assert insufficient_data(c_n, c_conv, v_n, v_conv) is insufficient
