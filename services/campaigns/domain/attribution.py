"""A campaign's report: per-arm figures by intent to treat and each variant against the control (SPEC.md "Campaigns",
Attribution). THE reference definition: the service may compute ArmTotals in SQL, never the rest."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, ParamSpec, TypeVar

from services.campaigns.domain import statistics
from services.campaigns.domain.assignment import HOLDOUT, Variant, arms
from services.campaigns.domain.coupons import CouponOrder, redemptions

COMPLETED = "completed"
REFUNDED = "refunded"
DELIVERED = "delivered"
ZERO = Decimal(0)
EXACT_DIGITS = 120
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Campaign:
    """What the report needs of a campaign: its arms, attribution window and costs (SPEC.md Lifecycle)."""

    campaign_id: str
    holdout_bp: int
    variants: tuple[Variant, ...]
    window_days: int = 7
    per_touch_cost: Decimal = ZERO
    budget: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PersonInArm:
    """A person and the campaign arm they were assigned to (a variant name or "holdout")."""

    person_key: str
    arm: str


@dataclass(frozen=True, slots=True)
class Assignment(PersonInArm):
    """A person's entry into the campaign: the arm and assigned_at."""

    assigned_at: datetime


@dataclass(frozen=True, slots=True)
class Touch(PersonInArm):
    """A non-holdout assignment's touch: its arm, status (pending/delivered/failed/suppressed) and delivery time."""

    status: str
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One raw order event (completed or refunded), as posted (SPEC.md Events, order)."""

    person_key: str
    order_id: str
    event_id: str
    occurred_at: datetime
    status: str
    total: Decimal
    discount: Decimal | None = None
    coupon_code: str | None = None
    refund_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ArmTotals:
    """The sufficient statistics of one arm; every report figure follows from these (revenue_sq: the sum over the
    arm's assigned persons of the square of their attributed revenue)."""

    assigned: int = 0
    touched: int = 0
    conversions: int = 0
    revenue: Decimal = ZERO
    revenue_sq: Decimal = ZERO
    refunds: Decimal = ZERO
    redemptions: int = 0
    discount_cost: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class ArmFigures:
    """One arm's row of the report; money as unrounded Decimal, ratios as float or None (SPEC.md Attribution)."""

    assigned: int
    touched: int
    conversions: int
    conversion_rate: float | None
    revenue: Decimal
    revenue_per_assigned: Decimal | None
    refunds: Decimal
    redemptions: int
    discount_cost: Decimal
    cost: Decimal
    roi: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant against the control, differences variant minus control (SPEC.md Attribution)."""

    lift_abs: float | None
    lift_rel: float | None
    p_value: float | None
    ci95: tuple[float, float] | None
    prob_to_beat: float
    revenue_per_assigned: statistics.WelchResult
    incremental_revenue: Decimal | None
    incremental_roi: float | None
    insufficient_data: bool


@dataclass(frozen=True, slots=True)
class CampaignReport:
    """GET /v1/campaigns/{id}/report: figures per arm (holdout first), comparisons, and the SRM check."""

    campaign_id: str
    as_of: datetime
    control: str
    variants: dict[str, ArmFigures]
    comparisons: dict[str, Comparison]
    srm: bool
    srm_p_value: float | None
    srm_chi2: float | None = field(default=None)


def arm_sums() -> dict[str, Any]:
    """ArmTotals' fields at their zero, to add to (the report's accumulators; ``ArmTotals(**sums)`` freezes them)."""
    return {f.name: f.default for f in fields(ArmTotals)}


def _exact(compute: Callable[P, R]) -> Callable[P, R]:
    """``compute`` with Decimal arithmetic to EXACT_DIGITS digits."""

    @functools.wraps(compute)
    def exactly(*args: P.args, **kwargs: P.kwargs) -> R:
        with localcontext() as context:
            context.prec = EXACT_DIGITS
            return compute(*args, **kwargs)

    return exactly


@_exact
def _decimal(value: Fraction) -> Decimal:
    # A quotient of exact sums, to enough digits that rounding half up to cents is decided right.
    return Decimal(value.numerator) / Decimal(value.denominator)


def _ratio(numerator: Fraction | int, denominator: Fraction | int) -> float | None:
    return float(Fraction(numerator) / Fraction(denominator)) if denominator else None


def control_arm(campaign: Campaign) -> str:
    """The holdout when the campaign has one (even if empty), else the first variant (SPEC.md Attribution)."""
    return HOLDOUT if campaign.holdout_bp > 0 else campaign.variants[0].name


def counting_events(orders: Iterable[OrderEvent], as_of: datetime) -> dict[str, OrderEvent]:
    """order_id -> its counting event: the earliest completed event by A, ties by event_id (SPEC.md Definitions)."""
    counting: dict[str, OrderEvent] = {}
    for event in orders:
        if event.status != COMPLETED or event.occurred_at > as_of:
            continue
        known = counting.get(event.order_id)
        if known is None or (event.occurred_at, event.event_id) < (known.occurred_at, known.event_id):
            counting[event.order_id] = event
    return counting


def refunds_by_order(
    orders: Iterable[OrderEvent], counting: Mapping[str, OrderEvent], as_of: datetime
) -> dict[str, Decimal]:
    """order_id -> refunds by A of a counted order, refund_amount defaulting to the order's total (SPEC.md Definitions)."""
    refunded: dict[str, Decimal] = defaultdict(Decimal)
    for event in orders:
        if event.status != REFUNDED or event.occurred_at > as_of or event.order_id not in counting:
            continue
        amount = event.refund_amount if event.refund_amount is not None else counting[event.order_id].total
        refunded[event.order_id] += amount
    return dict(refunded)


def _distinct_events(orders: Iterable[OrderEvent]) -> list[OrderEvent]:
    # The same event_id is counted once, forever (SPEC.md Events): a redelivered event is the first one again.
    seen: set[str] = set()
    distinct = []
    for event in orders:
        if event.event_id not in seen:
            seen.add(event.event_id)
            distinct.append(event)
    return distinct


def included_assignments(assignments: Iterable[Assignment], as_of: datetime) -> dict[str, Assignment]:
    """person_key -> assignment, for assignments with assigned_at <= A; a person enters once (the earliest kept)."""
    included: dict[str, Assignment] = {}
    for assignment in sorted(assignments, key=lambda entry: entry.assigned_at):
        if assignment.assigned_at <= as_of and assignment.person_key not in included:
            included[assignment.person_key] = assignment
    return included


@_exact  # sums of squared revenues reach ~50 digits; the default 28 would round them (and Welch's variances)
def arm_totals(
    campaign: Campaign,
    assignments: Sequence[Assignment],
    touches: Sequence[Touch],
    orders: Sequence[OrderEvent],
    coupons: Mapping[str, tuple[str, int]],
    as_of: datetime,
) -> dict[str, ArmTotals]:
    """Each arm's sufficient statistics as of A from assignments, touches and raw order events (SPEC.md Attribution)."""
    # A person's counted orders whose counting event lies in [assigned_at, assigned_at + window_days x 24 h] and
    # <= A count for the person's arm; touched = touches delivered by A; redemptions and their discount cost come
    # from `coupons` (code -> (person, limit)) and count in the code's person's arm, whenever they fall.
    events = _distinct_events(orders)
    counting = counting_events(events, as_of)
    refunded = refunds_by_order(events, counting, as_of)
    counted_by_person: dict[str, list[OrderEvent]] = defaultdict(list)
    for event in counting.values():
        counted_by_person[event.person_key].append(event)
    included = included_assignments(assignments, as_of)
    window = timedelta(days=campaign.window_days)

    names = [name for name, _ in arms(campaign.holdout_bp, campaign.variants)]
    sums: dict[str, dict[str, Any]] = {name: arm_sums() for name in names}
    for assignment in included.values():
        arm = sums.setdefault(assignment.arm, arm_sums())
        arm["assigned"] += 1
        end = assignment.assigned_at + window
        attributed = [
            event
            for event in counted_by_person.get(assignment.person_key, ())
            if assignment.assigned_at <= event.occurred_at <= end
        ]
        if not attributed:
            continue
        person_revenue = sum((event.total for event in attributed), ZERO)
        arm["conversions"] += 1
        arm["revenue"] += person_revenue
        arm["revenue_sq"] += person_revenue * person_revenue
        arm["refunds"] += sum((refunded.get(event.order_id, ZERO) for event in attributed), ZERO)

    for touch in touches:
        if touch.status == DELIVERED and touch.delivered_at is not None and touch.delivered_at <= as_of:
            sums.setdefault(touch.arm, arm_sums())["touched"] += 1

    for code, (code_person, limit) in coupons.items():
        assignment = included.get(code_person)
        if assignment is None:
            continue
        carrying = [
            CouponOrder(
                person_key=event.person_key,
                order_id=event.order_id,
                event_id=event.event_id,
                occurred_at=event.occurred_at,
                coupon_code=event.coupon_code,
                discount=event.discount if event.discount is not None else ZERO,
            )
            for event in counted_by_person.get(code_person, ())
            if event.coupon_code == code
        ]
        redeemed = redemptions(carrying, limit)
        arm = sums.setdefault(assignment.arm, arm_sums())
        arm["redemptions"] += len(redeemed)
        arm["discount_cost"] += sum((order.discount for order in redeemed), ZERO)

    return {name: ArmTotals(**arm) for name, arm in sums.items()}


def arm_figures(totals: ArmTotals, per_touch_cost: Decimal) -> ArmFigures:
    """One arm's row: conversion_rate, revenue_per_assigned, cost = discount_cost + per-touch cost x touched and
    roi = (revenue - cost) / cost, null when cost = 0 (SPEC.md Attribution)."""
    cost = totals.discount_cost + per_touch_cost * totals.touched
    return ArmFigures(
        assigned=totals.assigned,
        touched=totals.touched,
        conversions=totals.conversions,
        conversion_rate=_ratio(totals.conversions, totals.assigned),
        revenue=totals.revenue,
        revenue_per_assigned=_decimal(Fraction(totals.revenue) / totals.assigned) if totals.assigned else None,
        refunds=totals.refunds,
        redemptions=totals.redemptions,
        discount_cost=totals.discount_cost,
        cost=cost,
        roi=_ratio(Fraction(totals.revenue - cost), Fraction(cost)),
    )


def compare(control: ArmTotals, variant: ArmTotals, variant_cost: Decimal) -> Comparison:
    """A variant against the control: rate lifts and tests, prob_to_beat, Welch on revenue per assigned person,
    incremental revenue = (rpa - control's rpa) x assigned and its ROI on the variant's cost (SPEC.md Attribution)."""
    lift_abs, lift_rel, p_value, ci95 = statistics.two_proportion(
        control.conversions, control.assigned, variant.conversions, variant.assigned
    )
    incremental_revenue = None
    incremental_roi = None
    if control.assigned and variant.assigned:
        incremental = Fraction(variant.revenue) - Fraction(control.revenue) * variant.assigned / control.assigned
        incremental_revenue = _decimal(incremental)
        incremental_roi = _ratio(incremental - Fraction(variant_cost), Fraction(variant_cost))
    return Comparison(
        lift_abs=lift_abs,
        lift_rel=lift_rel,
        p_value=p_value,
        ci95=ci95,
        prob_to_beat=statistics.prob_to_beat(
            control.conversions, control.assigned, variant.conversions, variant.assigned
        ),
        revenue_per_assigned=statistics.welch(
            control.assigned, control.revenue, control.revenue_sq, variant.assigned, variant.revenue, variant.revenue_sq
        ),
        incremental_revenue=incremental_revenue,
        incremental_roi=incremental_roi,
        insufficient_data=statistics.insufficient_data(
            control.assigned, control.conversions, variant.assigned, variant.conversions
        ),
    )


def report_from_totals(campaign: Campaign, totals: Mapping[str, ArmTotals], as_of: datetime) -> CampaignReport:
    """The report from each arm's sufficient statistics: arms in order (holdout first), comparisons against the
    control, SRM chi-square of assigned counts against the splits (SPEC.md Attribution)."""
    splits = arms(campaign.holdout_bp, campaign.variants)
    per_arm = {name: totals.get(name, ArmTotals()) for name, _ in splits}
    figures = {name: arm_figures(arm, campaign.per_touch_cost) for name, arm in per_arm.items()}
    control = control_arm(campaign)
    comparisons = {
        name: compare(per_arm[control], arm, figures[name].cost) for name, arm in per_arm.items() if name != control
    }
    chi2, p_value = statistics.srm([per_arm[name].assigned for name, _ in splits], [split for _, split in splits])
    return CampaignReport(
        campaign_id=campaign.campaign_id,
        as_of=as_of,
        control=control,
        variants=figures,
        comparisons=comparisons,
        srm=statistics.srm_flagged(p_value),
        srm_p_value=p_value,
        srm_chi2=chi2,
    )


def report(campaign: Campaign, assignments: Sequence[Assignment], touches: Sequence[Touch],
           orders: Sequence[OrderEvent], coupons: Mapping[str, tuple[str, int]], as_of: datetime) -> CampaignReport:
    """The campaign's report as of A from plain data (SPEC.md Attribution): report_from_totals over arm_totals (the
    same arguments)."""
    return report_from_totals(campaign, arm_totals(campaign, assignments, touches, orders, coupons, as_of), as_of)
