"""The report against a brute-force reading of SPEC.md "Attribution" and "Definitions: Orders", over generated
assignments, touches and raw order events (out of order, redelivered)."""

import math
from datetime import timedelta
from decimal import Decimal, localcontext

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.campaigns.domain.assignment import Variant
from services.campaigns.domain.attribution import (
    Assignment,
    Campaign,
    OrderEvent,
    Touch,
    arm_totals,
    report,
    report_from_totals,
)

from .builders import T0

PERSONS = [f"p{n}" for n in range(8)] + ["张伟", "李娜"]
MINUTE = timedelta(minutes=1)
moments = st.integers(-3 * 24 * 60, 20 * 24 * 60).map(lambda minutes: T0 + minutes * MINUTE)
money = st.decimals(min_value=0, max_value=Decimal("5000"), places=2)


@st.composite
def campaigns(draw):
    holdout_bp = draw(st.sampled_from([0, 1000, 5000]))
    names = draw(st.sampled_from([["a"], ["a", "b"], ["a", "b", "c"]]))
    left = 10_000 - holdout_bp
    splits = [left // len(names)] * len(names)
    splits[0] += left - sum(splits)
    if len(names) > 1 and draw(st.booleans()):
        splits[0], splits[-1] = splits[0] + splits[-1], 0  # an arm with split 0
    return Campaign(
        "c",
        holdout_bp,
        tuple(Variant(name, split) for name, split in zip(names, splits, strict=True)),
        window_days=draw(st.integers(1, 10)),
        per_touch_cost=draw(st.sampled_from([Decimal(0), Decimal("0.05"), Decimal("1.20")])),
    )


@st.composite
def scenarios(draw):
    campaign = draw(campaigns())
    arm_names = (["holdout"] if campaign.holdout_bp else []) + [v.name for v in campaign.variants]
    people = draw(st.lists(st.sampled_from(PERSONS), unique=True, max_size=len(PERSONS)))
    assignments = [Assignment(person, draw(st.sampled_from(arm_names)), draw(moments)) for person in people]
    touches = []
    coupons = {}
    for assignment in assignments:
        if assignment.arm == "holdout":
            continue
        status = draw(st.sampled_from(["pending", "delivered", "failed", "suppressed"]))
        delivered_at = assignment.assigned_at + draw(st.integers(0, 600)) * MINUTE if status == "delivered" else None
        touches.append(Touch(assignment.person_key, assignment.arm, status, delivered_at))
        if draw(st.booleans()):
            coupons[f"CODE-{assignment.person_key}"] = (assignment.person_key, draw(st.integers(1, 3)))
    codes = [*coupons, "UNKNOWN"]
    orders = []
    for number in range(draw(st.integers(0, 25))):
        order_id = f"o{draw(st.integers(0, 12))}"
        status = draw(st.sampled_from(["completed", "completed", "refunded"]))
        orders.append(
            OrderEvent(
                person_key=draw(st.sampled_from(PERSONS)),
                order_id=order_id,
                event_id=f"e{number:02d}",
                occurred_at=draw(moments),
                status=status,
                total=draw(money),
                discount=draw(st.none() | money),
                coupon_code=draw(st.none() | st.sampled_from(codes)),
                refund_amount=draw(st.none() | money) if status == "refunded" else None,
            )
        )
    # Redeliveries: some events posted again (same event_id), and everything out of order.
    orders += draw(st.lists(st.sampled_from(orders), max_size=4)) if orders else []
    orders = draw(st.permutations(orders))
    as_of = draw(moments)
    return campaign, assignments, touches, orders, coupons, as_of


def spec_figures(campaign, assignments, touches, orders, coupons, as_of):
    """Per arm, straight from the SPEC's sentences: (assigned, touched, conversions, revenue, refunds,
    redemptions, discount_cost, per-person revenues)."""
    unique = {}
    for event in orders:
        unique.setdefault(event.event_id, event)
    visible = [event for event in unique.values() if event.occurred_at <= as_of]
    counting = {}
    for event in sorted((e for e in visible if e.status == "completed"), key=lambda e: (e.occurred_at, e.event_id)):
        counting.setdefault(event.order_id, event)
    arm_names = (["holdout"] if campaign.holdout_bp else []) + [v.name for v in campaign.variants]
    figures = {
        arm: {"assigned": 0, "touched": 0, "conversions": 0, "revenue": Decimal(0), "refunds": Decimal(0),
              "redemptions": 0, "discount_cost": Decimal(0), "per_person": []}
        for arm in arm_names
    }
    arm_of_person = {}
    for assignment in assignments:
        if assignment.assigned_at > as_of:
            continue
        arm_of_person[assignment.person_key] = assignment.arm
        arm = figures[assignment.arm]
        arm["assigned"] += 1
        window_end = assignment.assigned_at + timedelta(days=campaign.window_days)
        mine = [
            event
            for event in counting.values()
            if event.person_key == assignment.person_key and assignment.assigned_at <= event.occurred_at <= window_end
        ]
        person_revenue = sum((event.total for event in mine), Decimal(0))
        arm["per_person"].append(person_revenue)
        arm["conversions"] += bool(mine)
        arm["revenue"] += person_revenue
        mine_ids = {event.order_id for event in mine}
        for event in visible:
            if event.status == "refunded" and event.order_id in mine_ids:
                amount = event.refund_amount
                arm["refunds"] += amount if amount is not None else counting[event.order_id].total
    for touch in touches:
        if touch.status == "delivered" and touch.delivered_at <= as_of:
            figures[touch.arm]["touched"] += 1
    for code, (owner, limit) in coupons.items():
        if owner not in arm_of_person:
            continue
        carrying = sorted(
            (e for e in counting.values() if e.person_key == owner and e.coupon_code == code),
            key=lambda e: (e.occurred_at, e.event_id),
        )
        for event in carrying[:limit]:
            figures[arm_of_person[owner]]["redemptions"] += 1
            figures[arm_of_person[owner]]["discount_cost"] += event.discount or Decimal(0)
    return figures


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_each_arms_figures_equal_a_brute_force_reading_of_the_spec(scenario):
    campaign = scenario[0]
    expected = spec_figures(*scenario)

    result = report(*scenario)

    for arm, figures in expected.items():
        got = result.variants[arm]
        cost = figures["discount_cost"] + campaign.per_touch_cost * figures["touched"]
        assert (got.assigned, got.touched, got.conversions) == (figures["assigned"], figures["touched"], figures["conversions"])
        assert (got.revenue, got.refunds) == (figures["revenue"], figures["refunds"])
        assert (got.redemptions, got.discount_cost, got.cost) == (figures["redemptions"], figures["discount_cost"], cost)
        assert got.roi == (None if cost == 0 else pytest.approx(float((figures["revenue"] - cost) / cost)))
        if figures["assigned"]:
            assert got.conversion_rate == pytest.approx(figures["conversions"] / figures["assigned"])
            assert got.revenue_per_assigned == pytest.approx(figures["revenue"] / figures["assigned"])
        else:
            assert got.conversion_rate is None and got.revenue_per_assigned is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_each_comparison_equals_independent_statistics_on_the_brute_force_figures(scenario):
    campaign = scenario[0]
    expected = spec_figures(*scenario)
    control = "holdout" if campaign.holdout_bp else campaign.variants[0].name

    result = report(*scenario)

    assert result.control == control
    c = expected[control]
    for arm, v in expected.items():
        if arm == control:
            continue
        comparison = result.comparisons[arm]
        if c["assigned"] and v["assigned"]:
            rate_c, rate_v = c["conversions"] / c["assigned"], v["conversions"] / v["assigned"]
            assert comparison.lift_abs == pytest.approx(rate_v - rate_c)
            assert comparison.lift_rel == (pytest.approx((rate_v - rate_c) / rate_c) if rate_c else None)
            half = 1.959964 * math.sqrt(rate_c * (1 - rate_c) / c["assigned"] + rate_v * (1 - rate_v) / v["assigned"])
            assert comparison.ci95 == pytest.approx((rate_v - rate_c - half, rate_v - rate_c + half))
            with localcontext() as context:
                context.prec = 60
                incremental = (v["revenue"] / v["assigned"] - c["revenue"] / c["assigned"]) * v["assigned"]
            assert comparison.incremental_revenue == pytest.approx(incremental, abs=Decimal("1e-20"))
        else:
            assert comparison.lift_abs is None and comparison.incremental_revenue is None
        control_revenues = np.array([float(x) for x in c["per_person"]])
        variant_revenues = np.array([float(x) for x in v["per_person"]])
        testable = (
            len(control_revenues) >= 2
            and len(variant_revenues) >= 2
            and (control_revenues.var() > 0 or variant_revenues.var() > 0)
        )
        if testable:
            welch = scipy.stats.ttest_ind(variant_revenues, control_revenues, equal_var=False)
            assert comparison.revenue_per_assigned.p_value == pytest.approx(float(welch.pvalue), rel=1e-6, abs=1e-12)
            assert comparison.revenue_per_assigned.df == pytest.approx(float(welch.df), rel=1e-6)
        else:
            assert comparison.revenue_per_assigned.p_value is None
        assert comparison.insufficient_data is (
            min(c["assigned"], v["assigned"]) < 50 or min(c["conversions"], v["conversions"]) < 5
        )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.randoms(use_true_random=False))
def test_the_report_is_the_same_whatever_the_order_events_arrive_in(scenario, rng):
    campaign, assignments, touches, orders, coupons, as_of = scenario
    shuffled = list(orders)
    rng.shuffle(shuffled)

    assert report(campaign, assignments, touches, shuffled, coupons, as_of) == report(*scenario)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_report_is_report_from_totals_of_arm_totals(scenario):
    campaign, as_of = scenario[0], scenario[-1]

    assert report(*scenario) == report_from_totals(campaign, arm_totals(*scenario), as_of)
