"""Each assigned person's share of a campaign report, computed in the database: the SQL form of the domain's
``attribution.arm_totals`` (SPEC.md "Campaigns", Attribution), one row per (campaign, person) before the sum
over an arm. Two readers use it:

- ``arm_totals_sql`` adds the rows of one campaign up per arm as of any A (the report for an explicit ``as_of``);
- ``report_state`` keeps the same rows, as of everything stored, for every assigned person, and running per-arm
  totals beside them (the report for "now"), refreshed for the persons each write touches.

A hypothesis test holds both equal to the domain on SQLite and PostgreSQL
(tests/integration/campaigns/test_report_totals_match_domain.py); everything after the totals is the domain's
``report_from_totals``.

Money is integer cents; per-person sums are ``wide_sum`` pairs (exact past 64 bits on both databases), joined
in Python.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Numeric, and_, bindparam, case, cast, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import bytewise, wide_sum, wide_total
from services.campaigns.adapters.tables import (
    assignments,
    campaigns,
    counted_orders,
    coupons,
    order_events,
    touches,
)
from services.campaigns.domain.attribution import ArmTotals, arm_sums

_DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class PersonShare:
    """One assigned person's contribution to their arm: touched (a touch delivered), attributed counted orders and
    their revenue, refunds of those orders, redemptions of the person's code and their discount (cents), and
    ``horizon_us``, the latest time among everything counted (the report at any A >= horizon counts all of it)."""

    variant: str
    touched: bool
    orders: int
    revenue: int
    refunds: int
    redemptions: int
    discount: int
    horizon_us: int


def cents_decimal(value: Any) -> Decimal:
    # From a string: exact whatever the digits (scaleb would round to the context's 28 digits).
    return Decimal(f"{int(value or 0)}E-2")


def arm_totals_of(sums: dict[str, int]) -> ArmTotals:
    """Integer sums (cents; revenue_sq in cents squared) as the domain's ArmTotals."""
    return ArmTotals(assigned=sums["assigned"], touched=sums["touched"], conversions=sums["conversions"],
                     revenue=cents_decimal(sums["revenue"]), revenue_sq=Decimal(f"{sums['revenue_sq']}E-4"),
                     refunds=cents_decimal(sums["refunds"]), redemptions=sums["redemptions"],
                     discount_cost=cents_decimal(sums["discount_cost"]))


def empty_sums() -> dict[str, int]:
    """The domain's arm sums at zero, in integers (cents; revenue_sq in cents squared)."""
    return {name: 0 for name in arm_sums()}


def add_share(sums: dict[str, int], share: PersonShare, sign: int = 1) -> None:
    """Add (sign 1) or take away (sign -1) one person's share from an arm's integer sums."""
    sums["assigned"] += sign
    sums["touched"] += sign * int(share.touched)
    sums["conversions"] += sign * int(share.orders > 0)
    sums["revenue"] += sign * share.revenue
    sums["revenue_sq"] += sign * share.revenue * share.revenue
    sums["refunds"] += sign * share.refunds
    sums["redemptions"] += sign * share.redemptions
    sums["discount_cost"] += sign * share.discount


def _scoped(campaign_column: Any, person_column: Any, by_campaign: bool, by_persons: bool) -> list[Any]:
    conditions = []
    if by_campaign:
        conditions.append(campaign_column == bindparam("campaign_id"))
    if by_persons:
        conditions.append(person_column.in_(bindparam("persons", expanding=True)))
    return conditions


def _by(by_as_of: bool, column: Any) -> list[Any]:
    return [column <= bindparam("as_of_us", type_=BigInteger)] if by_as_of else []


def person_shares(dialect: str, *, campaign_id: str | None = None, persons: Collection[str] | None = None,
                  as_of_us: int | None = None) -> tuple[Any, dict[str, Any]]:
    """One row per assignment (of ``campaign_id`` / of ``persons`` when given; with assigned_at <= A when A is
    given): the person's share as of A, or as of everything stored when A is None. The statement (built once per
    shape) and its parameters.

    SPEC.md Attribution: a person's counted orders whose counting event lies in [assigned_at, assigned_at +
    window_days x 24 h] (and <= A) count for the person's arm; refunds (by A) of those orders, refund_amount
    defaulting to the order's total; touched = the person's touch delivered (by A); redemptions: the code's
    person's first ``per_person_limit`` counted orders carrying it, by (occurred_at, event_id), counted when they
    fall (by A), with their discount."""
    statement = _person_shares(dialect, campaign_id is not None, persons is not None, as_of_us is not None)
    params: dict[str, Any] = {}
    if campaign_id is not None:
        params["campaign_id"] = campaign_id
    if persons is not None:
        params["persons"] = list(persons)
    if as_of_us is not None:
        params["as_of_us"] = as_of_us
    return statement, params


@functools.cache
def _person_shares(dialect: str, by_campaign: bool, by_persons: bool, by_as_of: bool) -> Any:
    a, c, o, t, r, cp = (assignments.c, campaigns.c, counted_orders.c, touches.c, order_events.c, coupons.c)
    included = [*_scoped(a.campaign_id, a.person_key, by_campaign, by_persons), *_by(by_as_of, a.assigned_us)]
    keys = (a.campaign_id, a.person_key)

    attributed = (select(a.campaign_id, a.person_key, o.order_id, o.total_cents, o.occurred_us)
                  .select_from(assignments.join(campaigns, c.campaign_id == a.campaign_id)
                               .join(counted_orders, o.person_key == a.person_key))
                  .where(*included, o.occurred_us >= a.assigned_us,
                         o.occurred_us <= a.assigned_us + c.window_days * literal(_DAY_US, BigInteger), *_by(by_as_of, o.occurred_us))
                  .subquery("attributed"))
    revenue_high, revenue_low = wide_sum(attributed.c.total_cents)
    orders = (select(attributed.c.campaign_id, attributed.c.person_key, func.count().label("orders"),
                     revenue_high.label("revenue_high"), revenue_low.label("revenue_low"),
                     func.max(attributed.c.occurred_us).label("orders_us"))
              .group_by(attributed.c.campaign_id, attributed.c.person_key).subquery("orders"))

    refund_high, refund_low = wide_sum(func.coalesce(r.refund_cents, attributed.c.total_cents))
    refunds = (select(attributed.c.campaign_id, attributed.c.person_key, refund_high.label("refund_high"),
                      refund_low.label("refund_low"), func.max(r.occurred_us).label("refunds_us"))
               .select_from(attributed.join(order_events, r.order_id == attributed.c.order_id))
               .where(r.status == "refunded", *_by(by_as_of, r.occurred_us))
               .group_by(attributed.c.campaign_id, attributed.c.person_key).subquery("refunds"))

    ranked = (select(cp.campaign_id, cp.person_key, o.discount_cents, o.occurred_us, cp.per_person_limit,
                     func.row_number().over(partition_by=cp.code,
                                            order_by=(o.occurred_us, bytewise(dialect, o.event_id))).label("n"))
              .select_from(coupons.join(counted_orders, and_(o.coupon_code == cp.code, o.person_key == cp.person_key)))
              .where(*_scoped(cp.campaign_id, cp.person_key, by_campaign, by_persons))
              .subquery("ranked"))
    discount_high, discount_low = wide_sum(func.coalesce(ranked.c.discount_cents, 0))
    redeemed = (select(ranked.c.campaign_id, ranked.c.person_key, func.count().label("redemptions"),
                       discount_high.label("discount_high"), discount_low.label("discount_low"),
                       func.max(ranked.c.occurred_us).label("redeemed_us"))
                .where(ranked.c.n <= ranked.c.per_person_limit, *_by(by_as_of, ranked.c.occurred_us))
                .group_by(ranked.c.campaign_id, ranked.c.person_key).subquery("redeemed"))

    delivered = (select(t.campaign_id, t.person_key, t.delivered_us)
                 .where(*_scoped(t.campaign_id, t.person_key, by_campaign, by_persons), t.status == "delivered",
                        *_by(by_as_of, t.delivered_us))
                 .subquery("delivered"))

    def on(sub: Any) -> Any:
        return and_(sub.c.campaign_id == a.campaign_id, sub.c.person_key == a.person_key)

    return (select(*keys, a.variant, a.assigned_us, delivered.c.delivered_us,
                   func.coalesce(orders.c.orders, 0).label("orders"), orders.c.revenue_high, orders.c.revenue_low,
                   orders.c.orders_us, refunds.c.refund_high, refunds.c.refund_low, refunds.c.refunds_us,
                   func.coalesce(redeemed.c.redemptions, 0).label("redemptions"), redeemed.c.discount_high,
                   redeemed.c.discount_low, redeemed.c.redeemed_us)
            .select_from(assignments.outerjoin(delivered, on(delivered)).outerjoin(orders, on(orders))
                         .outerjoin(refunds, on(refunds)).outerjoin(redeemed, on(redeemed)))
            .where(*included))


def share_of(row: Any) -> PersonShare:
    """A ``person_shares`` row as exact integers."""
    horizon = row.assigned_us
    for time in (row.delivered_us, row.orders_us, row.refunds_us, row.redeemed_us):
        if time is not None and time > horizon:
            horizon = time
    return PersonShare(variant=row.variant, touched=row.delivered_us is not None, orders=int(row.orders),
                       revenue=wide_total(row.revenue_high, row.revenue_low) or 0,
                       refunds=wide_total(row.refund_high, row.refund_low) or 0,
                       redemptions=int(row.redemptions),
                       discount=wide_total(row.discount_high, row.discount_low) or 0,
                       horizon_us=horizon)


def _sum_shares(rows: Iterable[Any]) -> dict[str, dict[str, int]]:
    arms: dict[str, dict[str, int]] = defaultdict(empty_sums)
    for row in rows:
        add_share(arms[row.variant], share_of(row))
    return arms


async def arm_totals_sql(connection: AsyncConnection, campaign_id: str, as_of_us: int) -> dict[str, ArmTotals]:
    """Per arm: assigned, touched, conversions, revenue, revenue_sq, refunds, redemptions, discount_cost as of A."""
    dialect = connection.dialect.name
    shares, params = person_shares(dialect, campaign_id=campaign_id, as_of_us=as_of_us)
    if dialect == "postgresql":
        arms = await _sum_in_numeric(connection, shares, params)
    else:
        arms = _sum_shares(await connection.execute(shares, params))
    # touched: every touch delivered by A, whenever its assignment falls (the domain counts touches on their own).
    t = touches.c
    arms_touched = (select(t.variant, func.count())
                    .where(t.campaign_id == campaign_id, t.status == "delivered", t.delivered_us <= as_of_us)
                    .group_by(t.variant))
    for sums in arms.values():
        sums["touched"] = 0
    for variant, count in await connection.execute(arms_touched):
        arms[variant]["touched"] = count
    return {variant: arm_totals_of(sums) for variant, sums in arms.items()}


async def _sum_in_numeric(connection: AsyncConnection, shares: Any, params: dict[str, Any]) -> dict[str, dict[str, int]]:
    # PostgreSQL adds up in numeric (exact at any size) rather than shipping a row per person.
    per = shares.subquery("per")
    shift = literal(2**32, Numeric)

    def money(high: Any, low: Any) -> Any:
        return func.coalesce(cast(high, Numeric) * shift + low, 0)

    revenue = money(per.c.revenue_high, per.c.revenue_low)
    query = (select(per.c.variant, func.count(), func.count(per.c.delivered_us),
                    func.count(case((per.c.orders > 0, 1))), func.sum(revenue), func.sum(revenue * revenue),
                    func.sum(money(per.c.refund_high, per.c.refund_low)), func.sum(per.c.redemptions),
                    func.sum(money(per.c.discount_high, per.c.discount_low)))
             .group_by(per.c.variant))
    arms: dict[str, dict[str, int]] = defaultdict(empty_sums)
    for variant, *values in await connection.execute(query, params):
        arms[variant] = dict(zip(empty_sums(), (int(value or 0) for value in values), strict=True))
    return arms
