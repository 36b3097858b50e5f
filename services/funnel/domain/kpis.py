"""Daily and range KPIs, SPEC.md "Definitions" -> "Daily and range KPIs"."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from services.funnel.domain.facts import FunnelEvent, History, utc
from services.funnel.domain.stats import median, ratio, total

INQUIRY_FOLLOW_UP = timedelta(days=7)


@dataclass(frozen=True)
class Kpis:
    pv: int
    uv: int
    cart_users: int
    inquiry_users: int
    buyers: int
    orders: int
    gmv: Decimal
    refunds: Decimal
    net_gmv: Decimal
    conversion_rate: float | None
    aov: Decimal | None
    revenue_per_buyer: Decimal | None
    uv_value: Decimal | None
    repurchase_rate: float | None
    inquiry_rate: float | None
    inquiry_conversion: float | None
    median_response_seconds: float | None
    return_rate: float | None
    review_count: int
    avg_rating: float | None
    negative_share: float | None


def range_kpis(events: Iterable[FunnelEvent], start: datetime, end: datetime, as_of: datetime) -> Kpis:
    """Every KPI over [start, end) as known at as_of (SPEC.md "Daily and range KPIs")."""
    return _kpis(History(events, as_of), utc(start), utc(end))


def daily_kpis(
    events: Iterable[FunnelEvent], start: datetime, end: datetime, as_of: datetime, time_zone: str
) -> dict[date, Kpis]:
    """Every KPI per calendar day of [start, end) in the IANA time_zone, each over that day alone (SPEC.md `days`)."""
    history = History(events, as_of)
    start, end = utc(start), utc(end)
    zone = ZoneInfo(time_zone)
    days: dict[date, Kpis] = {}
    if start >= end:
        return days
    day = start.astimezone(zone).date()
    while (day_start := _start_of(day, zone)) < end:
        # A range that begins or ends inside a day keeps only its own part of that day.
        days[day] = _kpis(history, max(start, day_start), min(end, _start_of(day + timedelta(days=1), zone)))
        day += timedelta(days=1)
    return days


def _start_of(day: date, zone: ZoneInfo) -> datetime:
    return utc(datetime.combine(day, time(), zone))


def _kpis(history: History, start: datetime, end: datetime) -> Kpis:
    events = history.events.between(start, end)
    viewers = {e.person_key for e in events if e.type == "view"}
    cart_users = {e.person_key for e in events if e.type == "add_to_cart"}
    inquiries = [e for e in events if e.type == "inquiry"]
    inquirers = {e.person_key for e in inquiries}
    reviews = [e for e in events if e.type == "review"]
    ratings = [e.rating for e in reviews if e.rating is not None]

    placed = history.orders.between(start, end)
    orders_per_buyer = Counter(order.person_key for order in placed)
    gmv = total(order.order.amount for order in placed)
    refunds = total(refund.amount for refund in history.refunds.between(start, end))
    returned = [order for order in placed if order.order.order_id in history.refunded_order_ids]
    converted_inquirers = {e.person_key for e in inquiries if _ordered_within(history, e)}
    response_seconds = [e.response_seconds for e in inquiries if e.response_seconds is not None]

    return Kpis(
        pv=sum(e.type == "view" for e in events),
        uv=len(viewers),
        cart_users=len(cart_users),
        inquiry_users=len(inquirers),
        buyers=len(orders_per_buyer),
        orders=len(placed),
        gmv=gmv,
        refunds=refunds,
        net_gmv=gmv - refunds,
        conversion_rate=ratio(len(orders_per_buyer), len(viewers)),
        aov=ratio(gmv, len(placed)),
        revenue_per_buyer=ratio(gmv, len(orders_per_buyer)),
        uv_value=ratio(gmv, len(viewers)),
        repurchase_rate=ratio(sum(n >= 2 for n in orders_per_buyer.values()), len(orders_per_buyer)),
        inquiry_rate=ratio(len(inquirers), len(viewers)),
        inquiry_conversion=ratio(len(converted_inquirers), len(inquirers)),
        median_response_seconds=median(response_seconds),
        return_rate=ratio(len(returned), len(placed)),
        review_count=len(reviews),
        avg_rating=ratio(sum(ratings), len(ratings)),
        negative_share=ratio(sum(rating <= 2 for rating in ratings), len(ratings)),
    )


def _ordered_within(history: History, inquiry: FunnelEvent) -> bool:
    """Whether the person completed an order in [t, t + 7 days] after this inquiry at t."""
    orders = history.orders_by_person.get(inquiry.person_key, [])
    first = bisect_left(orders, inquiry.occurred_at, key=lambda order: order.occurred_at)
    return first < len(orders) and orders[first].occurred_at <= inquiry.occurred_at + INQUIRY_FOLLOW_UP
