"""Each arm's sufficient statistics for a campaign's report, computed in the database: the SQL form of the domain's
``attribution.arm_totals`` (SPEC.md "Campaigns", Attribution). A hypothesis test holds the two equal on SQLite and
PostgreSQL (tests/integration/campaigns/test_report_totals_match_domain.py); everything after the totals is the
domain's ``report_from_totals``.

Money is integer cents. PostgreSQL sums bigints as numeric (exact, no overflow); SQLite's integer sum raises on
overflow, so there the per-person sums come back and are added up in Python (exact integers).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, and_, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import bytewise
from services.campaigns.adapters.tables import assignments, counted_orders, coupons, order_events, touches
from services.campaigns.domain.attribution import ArmTotals

_DAY_US = 86_400_000_000


def _cents(value: Any) -> Decimal:
    # From a string: exact whatever the digits (scaleb would round to the context's 28 digits).
    return Decimal(f"{int(value or 0)}E-2")


def _attributed_orders(campaign_id: str, window_days: int, as_of_us: int) -> Any:
    """(variant, person_key, order_id, total_cents) of counted orders in [assigned_at, assigned_at + window] and
    <= A, of assignments with assigned_at <= A."""
    a, o = assignments.c, counted_orders.c
    return (select(a.variant, a.person_key, o.order_id, o.total_cents)
            .select_from(assignments.join(counted_orders, o.person_key == a.person_key))
            .where(a.campaign_id == campaign_id, a.assigned_us <= as_of_us, o.occurred_us >= a.assigned_us,
                   o.occurred_us <= a.assigned_us + window_days * _DAY_US, o.occurred_us <= as_of_us)
            .subquery("attributed"))


def _redemptions(dialect: str, campaign_id: str, as_of_us: int | None) -> Any:
    """(person_key, discount_cents) of each redemption of the campaign's codes: the code's person's first
    ``per_person_limit`` counted orders carrying it, by (occurred_at, event_id), counted when they fall by A."""
    cp, o = coupons.c, counted_orders.c
    ranked = (select(cp.person_key, o.discount_cents, o.occurred_us, cp.per_person_limit,
                     func.row_number().over(partition_by=cp.code,
                                            order_by=(o.occurred_us, bytewise(dialect, o.event_id))).label("n"))
              .select_from(coupons.join(counted_orders, and_(o.coupon_code == cp.code, o.person_key == cp.person_key)))
              .where(cp.campaign_id == campaign_id)
              .subquery("ranked"))
    query = select(ranked.c.person_key, ranked.c.discount_cents).where(ranked.c.n <= ranked.c.per_person_limit)
    if as_of_us is not None:
        query = query.where(ranked.c.occurred_us <= as_of_us)
    return query.subquery("redeemed")


async def arm_totals_sql(connection: AsyncConnection, campaign_id: str, window_days: int,
                         as_of_us: int) -> dict[str, ArmTotals]:
    """Per arm: assigned, touched, conversions, revenue, revenue_sq, refunds, redemptions, discount_cost as of A."""
    dialect = connection.dialect.name
    a, t = assignments.c, touches.c
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: {"assigned": 0, "touched": 0, "conversions": 0,
                                                           "revenue": 0, "revenue_sq": 0, "refunds": 0,
                                                           "redemptions": 0, "discount_cost": 0})
    assigned = (select(a.variant, func.count()).where(a.campaign_id == campaign_id, a.assigned_us <= as_of_us)
                .group_by(a.variant))
    for variant, count in await connection.execute(assigned):
        sums[variant]["assigned"] = count
    touched = (select(t.variant, func.count())
               .where(t.campaign_id == campaign_id, t.status == "delivered", t.delivered_us <= as_of_us)
               .group_by(t.variant))
    for variant, count in await connection.execute(touched):
        sums[variant]["touched"] = count

    attributed = _attributed_orders(campaign_id, window_days, as_of_us)
    per_person = (select(attributed.c.variant, attributed.c.person_key,
                         func.sum(attributed.c.total_cents).label("revenue"))
                  .group_by(attributed.c.variant, attributed.c.person_key).subquery("per_person"))
    if dialect == "postgresql":
        revenue = cast(per_person.c.revenue, Numeric)
        query = (select(per_person.c.variant, func.count(), func.sum(revenue), func.sum(revenue * revenue))
                 .group_by(per_person.c.variant))
        for variant, persons, total, total_sq in await connection.execute(query):
            arm = sums[variant]
            arm["conversions"], arm["revenue"], arm["revenue_sq"] = persons, int(total), int(total_sq)
    else:
        # One row per converting person; Python's integers do not overflow.
        for variant, _person, person_revenue in await connection.execute(select(per_person)):
            arm = sums[variant]
            arm["conversions"] += 1
            arm["revenue"] += person_revenue
            arm["revenue_sq"] += person_revenue * person_revenue

    r = order_events.c
    refund_cents = func.coalesce(r.refund_cents, attributed.c.total_cents)
    refunded = (attributed.join(order_events, r.order_id == attributed.c.order_id))
    if dialect == "postgresql":
        refunds = (select(attributed.c.variant, func.sum(cast(refund_cents, Numeric))).select_from(refunded)
                   .where(r.status == "refunded", r.occurred_us <= as_of_us).group_by(attributed.c.variant))
    else:
        refunds = (select(attributed.c.variant, refund_cents).select_from(refunded)
                   .where(r.status == "refunded", r.occurred_us <= as_of_us))
    for variant, amount in await connection.execute(refunds):
        sums[variant]["refunds"] += int(amount or 0)

    redeemed = _redemptions(dialect, campaign_id, as_of_us)
    discount = func.coalesce(redeemed.c.discount_cents, 0)
    joined = redeemed.join(assignments, and_(a.campaign_id == campaign_id, a.person_key == redeemed.c.person_key))
    if dialect == "postgresql":
        redemption_rows = (select(a.variant, func.count(), func.sum(cast(discount, Numeric))).select_from(joined)
                           .where(a.assigned_us <= as_of_us).group_by(a.variant))
    else:
        redemption_rows = select(a.variant, 1, discount).select_from(joined).where(a.assigned_us <= as_of_us)
    for variant, count, amount in await connection.execute(redemption_rows):
        sums[variant]["redemptions"] += count
        sums[variant]["discount_cost"] += int(amount or 0)

    return {variant: ArmTotals(assigned=s["assigned"], touched=s["touched"], conversions=s["conversions"],
                               revenue=_cents(s["revenue"]), revenue_sq=Decimal(f"{s['revenue_sq']}E-4"),
                               refunds=_cents(s["refunds"]), redemptions=s["redemptions"],
                               discount_cost=_cents(s["discount_cost"]))
            for variant, s in sums.items()}


async def discount_cost_cents(connection: AsyncConnection, campaign_id: str) -> int:
    """Discount cost of every redemption of the campaign's codes so far (the budget's share of discounts)."""
    redeemed = _redemptions(connection.dialect.name, campaign_id, None)
    rows = await connection.execute(select(redeemed.c.discount_cents))
    return sum(int(cents or 0) for (cents,) in rows)
