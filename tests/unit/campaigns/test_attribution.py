from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from services.campaigns.domain.assignment import Variant
from services.campaigns.domain.attribution import Touch, arm_totals, report, report_from_totals

from .builders import T0, TICK, WINBACK, assigned, at, completed, delivered, refunded

LATER = at(days=30)


def totals_of(assignments, orders=(), touches=(), coupons=None, as_of=LATER, campaign=WINBACK):
    return arm_totals(campaign, assignments, touches, orders, coupons or {}, as_of)


def test_orders_at_assignment_and_at_exactly_window_days_later_count():
    start = at(days=1)
    orders = [
        completed("ann", "o1", start, "10.00"),
        completed("ann", "o2", start + timedelta(days=7), "20.00"),
    ]

    coupon = totals_of([assigned("ann", "coupon", start)], orders)["coupon"]

    assert (coupon.conversions, coupon.revenue) == (1, Decimal("30.00"))


def test_orders_a_microsecond_before_assignment_or_after_the_window_do_not_count():
    start = at(days=1)
    orders = [
        completed("ann", "o1", start - TICK, "10.00"),
        completed("ann", "o2", start + timedelta(days=7) + TICK, "20.00"),
    ]

    coupon = totals_of([assigned("ann", "coupon", start)], orders)["coupon"]

    assert (coupon.assigned, coupon.conversions, coupon.revenue) == (1, 0, Decimal(0))


def test_the_window_is_the_campaigns_own_window_days():
    orders = [completed("ann", "o1", at(days=10), "10.00")]
    two_weeks = replace(WINBACK, window_days=14)

    assert totals_of([assigned("ann", "coupon")], orders)["coupon"].conversions == 0
    assert totals_of([assigned("ann", "coupon")], orders, campaign=two_weeks)["coupon"].conversions == 1


def test_as_of_cuts_assignments_orders_and_touches_at_its_instant():
    as_of = at(days=3)
    assignments = [assigned("ann", "coupon", at(days=1)), assigned("bob", "coupon", as_of + TICK)]
    orders = [completed("ann", "o1", as_of, "10.00"), completed("ann", "o2", as_of + TICK, "99.00")]
    touches = [delivered("ann", "coupon", as_of), delivered("bob", "coupon", as_of + TICK)]

    coupon = totals_of(assignments, orders, touches, as_of=as_of)["coupon"]

    assert (coupon.assigned, coupon.touched, coupon.revenue) == (1, 1, Decimal("10.00"))


def test_an_order_counts_once_at_its_earliest_completed_event():
    orders = [
        completed("ann", "o1", at(days=2), "50.00", event_id="late"),
        completed("ann", "o1", at(days=1), "40.00", event_id="early"),
    ]

    coupon = totals_of([assigned("ann", "coupon")], orders)["coupon"]

    assert (coupon.conversions, coupon.revenue) == (1, Decimal("40.00"))


def test_a_duplicate_completed_event_inside_the_window_does_not_rescue_an_order_counted_before_it():
    orders = [
        completed("ann", "o1", at(days=-1), "40.00", event_id="counting"),
        completed("ann", "o1", at(days=1), "40.00", event_id="duplicate"),
    ]

    assert totals_of([assigned("ann", "coupon")], orders)["coupon"].conversions == 0


def test_completed_events_at_the_same_instant_count_by_the_smaller_event_id():
    orders = [
        completed("ann", "o1", at(days=1), "70.00", event_id="b"),
        completed("ann", "o1", at(days=1), "60.00", event_id="a"),
    ]

    assert totals_of([assigned("ann", "coupon")], orders)["coupon"].revenue == Decimal("60.00")


def test_a_redelivered_event_counts_once():
    order = completed("ann", "o1", at(days=1), "25.00")
    refund = refunded("ann", "o1", at(days=2), "5.00")

    coupon = totals_of([assigned("ann", "coupon")], [order, refund, order, refund])["coupon"]

    assert (coupon.revenue, coupon.refunds) == (Decimal("25.00"), Decimal("5.00"))


def test_refunds_posted_before_their_completed_event_count_once_it_is_known_with_the_total_as_default():
    orders = [
        refunded("ann", "o1", at(days=3), None),
        refunded("ann", "o2", at(days=3), "7.50"),
        refunded("ann", "o2", at(days=4), "2.50"),
        completed("ann", "o1", at(days=1), "80.00"),
        completed("ann", "o2", at(days=2), "30.00"),
    ]

    coupon = totals_of([assigned("ann", "coupon")], orders)["coupon"]

    assert (coupon.revenue, coupon.refunds) == (Decimal("110.00"), Decimal("90.00"))


def test_a_refund_of_an_order_not_completed_by_as_of_or_itself_after_as_of_does_not_count():
    as_of = at(days=5)
    orders = [
        refunded("ann", "o1", at(days=2), "10.00"),
        completed("ann", "o1", as_of + TICK, "10.00"),
        completed("ann", "o2", at(days=1), "40.00"),
        refunded("ann", "o2", as_of + TICK, "40.00"),
    ]

    coupon = totals_of([assigned("ann", "coupon")], orders, as_of=as_of)["coupon"]

    assert (coupon.revenue, coupon.refunds) == (Decimal("40.00"), Decimal(0))


def test_revenue_is_gross_of_refunds():
    orders = [completed("ann", "o1", at(days=1), "80.00"), refunded("ann", "o1", at(days=2))]

    coupon = totals_of([assigned("ann", "coupon")], orders)["coupon"]

    assert (coupon.conversions, coupon.revenue, coupon.refunds) == (1, Decimal("80.00"), Decimal("80.00"))


def test_intent_to_treat_counts_a_person_whose_touch_failed_or_was_suppressed():
    assignments = [assigned("ann", "coupon"), assigned("bob", "coupon"), assigned("cy", "coupon")]
    touches = [
        Touch("ann", "coupon", "failed"),
        Touch("bob", "coupon", "suppressed"),
        delivered("cy", "coupon", at(hours=1)),
    ]
    orders = [completed("ann", "o1", at(days=1), "15.00")]

    coupon = totals_of(assignments, orders, touches)["coupon"]

    assert (coupon.assigned, coupon.touched, coupon.conversions) == (3, 1, 1)


def test_the_holdout_counts_its_orders_like_any_arm():
    orders = [completed("hal", "o1", at(days=1), "15.00")]

    holdout = totals_of([assigned("hal", "holdout")], orders)["holdout"]

    assert (holdout.assigned, holdout.conversions, holdout.revenue) == (1, 1, Decimal("15.00"))


def test_revenue_sq_sums_each_persons_squared_revenue():
    orders = [
        completed("ann", "o1", at(days=1), "3.00"),
        completed("ann", "o2", at(days=2), "4.00"),
        completed("bob", "o3", at(days=1), "5.00"),
    ]

    coupon = totals_of([assigned("ann", "coupon"), assigned("bob", "coupon")], orders)["coupon"]

    assert coupon.revenue_sq == Decimal(49 + 25)


def test_redemptions_are_the_persons_first_limit_orders_with_their_own_code_whenever_they_fall():
    coupons = {"ANNCODE": ("ann", 1), "BOBCODE": ("bob", 2)}
    orders = [
        completed("ann", "o1", at(days=20), "50.00", discount="10.00", code="ANNCODE"),  # outside the window
        completed("ann", "o2", at(days=21), "50.00", discount="10.00", code="ANNCODE"),  # past the limit
        completed("ann", "o3", at(days=1), "60.00", discount="6.00", code="BOBCODE"),  # another person's code
        completed("bob", "o4", at(days=1), "40.00", discount="4.00", code="BOBCODE"),
        completed("bob", "o5", at(days=2), "40.00", discount=None, code="BOBCODE"),
        completed("bob", "o6", at(days=3), "40.00", discount="4.00", code="BOBCODE"),
    ]

    coupon = totals_of([assigned("ann", "coupon"), assigned("bob", "coupon")], orders, coupons=coupons)["coupon"]

    assert (coupon.redemptions, coupon.discount_cost) == (3, Decimal("14.00"))


def test_a_refund_does_not_give_a_use_back():
    coupons = {"ANNCODE": ("ann", 1)}
    orders = [
        completed("ann", "o1", at(days=1), "50.00", discount="5.00", code="ANNCODE"),
        refunded("ann", "o1", at(days=2)),
        completed("ann", "o2", at(days=3), "50.00", discount="5.00", code="ANNCODE"),
    ]

    coupon = totals_of([assigned("ann", "coupon")], orders, coupons=coupons)["coupon"]

    assert (coupon.redemptions, coupon.discount_cost) == (1, Decimal("5.00"))


def test_cost_roi_and_incremental_revenue_against_the_holdout():
    assignments = [assigned(f"h{n}", "holdout") for n in range(4)] + [assigned(f"c{n}", "coupon") for n in range(5)]
    touches = [delivered(f"c{n}", "coupon", at(hours=1)) for n in range(4)]
    coupons = {"C0": ("c0", 1)}
    orders = [
        completed("h0", "o1", at(days=1), "40.00"),
        completed("c0", "o2", at(days=1), "100.00", discount="10.00", code="C0"),
        completed("c1", "o3", at(days=2), "50.00"),
    ]

    result = report(WINBACK, assignments, touches, orders, coupons, LATER)
    coupon = result.variants["coupon"]
    comparison = result.comparisons["coupon"]

    assert result.control == "holdout"
    assert coupon.cost == Decimal("10.00") + Decimal("0.05") * 4
    assert coupon.roi == pytest.approx(float((Decimal(150) - Decimal("10.20")) / Decimal("10.20")))
    assert coupon.revenue_per_assigned == Decimal(30)
    assert comparison.incremental_revenue == (Decimal(30) - Decimal(10)) * 5
    assert comparison.incremental_roi == pytest.approx((100 - 10.20) / 10.20)
    assert result.variants["holdout"].roi is None  # no cost
    assert result.variants["message"].conversion_rate is None  # nobody assigned
    assert result.comparisons["message"].incremental_revenue is None


def test_the_control_is_the_holdout_even_when_empty_else_the_first_variant():
    no_holdout = replace(WINBACK, holdout_bp=0, variants=(Variant("b", 5000), Variant("a", 5000)))

    with_holdout = report(WINBACK, [assigned("ann", "coupon")], [], [], {}, LATER)
    without = report(no_holdout, [assigned("ann", "a")], [], [], {}, LATER)

    assert with_holdout.control == "holdout"
    assert list(with_holdout.variants) == ["holdout", "coupon", "message"]
    assert set(with_holdout.comparisons) == {"coupon", "message"}
    assert without.control == "b"
    assert list(without.variants) == ["b", "a"]
    assert set(without.comparisons) == {"a"}


def test_a_lopsided_assignment_is_flagged_as_sample_ratio_mismatch():
    balanced = {"holdout": 200, "coupon": 400, "message": 400}
    lopsided = {"holdout": 300, "coupon": 350, "message": 350}

    def srm_of(counts):
        assignments = [assigned(f"{arm}{n}", arm) for arm, count in counts.items() for n in range(count)]
        return report(WINBACK, assignments, [], [], {}, LATER)

    assert not srm_of(balanced).srm
    assert srm_of(balanced).srm_p_value == pytest.approx(1.0)
    assert srm_of(lopsided).srm
    assert srm_of(lopsided).srm_p_value < 0.001


def test_a_campaign_without_assignments_reports_zeros_and_nulls():
    result = report(WINBACK, [], [], [], {}, LATER)

    assert result.variants["coupon"].assigned == 0
    assert result.srm_p_value is None and not result.srm
    assert result.comparisons["coupon"].p_value is None
    assert result.comparisons["coupon"].insufficient_data


def test_report_from_totals_fills_arms_missing_from_the_totals():
    result = report_from_totals(WINBACK, {}, LATER)

    assert [figures.assigned for figures in result.variants.values()] == [0, 0, 0]


def test_as_of_is_part_of_the_report():
    assert report(WINBACK, [], [], [], {}, T0).as_of == T0
