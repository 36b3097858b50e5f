"""Daily and range KPIs, SPEC.md "Definitions" -> "Daily and range KPIs"."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from services.funnel.domain.facts import FunnelEvent, History, utc
from services.funnel.domain.stats import median, ratio, total

INQUIRY_FOLLOW_UP = timedelta(days=7)


@dataclass(frozen=True)
class KpiTotals:
    """The counts and sums the KPIs report as they are, and take their ratios of."""

    pv: int
    uv: int
    cart_users: int
    inquiry_users: int
    buyers: int
    orders: int
    gmv: Decimal
    refunds: Decimal


@dataclass(frozen=True)
class Kpis(KpiTotals):
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
    return {day: _kpis(history, day_start, day_end) for day, day_start, day_end in day_spans(start, end, time_zone)}


def day_spans(start: datetime, end: datetime, time_zone: str) -> list[tuple[date, datetime, datetime]]:
    """The calendar days of the IANA time_zone that [start, end) touches, each with its part of the range."""
    start, end = utc(start), utc(end)
    zone = ZoneInfo(time_zone)
    spans: list[tuple[date, datetime, datetime]] = []
    if start >= end:
        return spans
    day = start.astimezone(zone).date()
    while (day_start := _start_of(day, zone)) < end:
        # A range that begins or ends inside a day keeps only its own part of that day.
        spans.append((day, max(start, day_start), min(end, _start_of(day + timedelta(days=1), zone))))
        day += timedelta(days=1)
    return spans


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

    return kpis_of(
        KpiCounts(
            pv=sum(e.type == "view" for e in events), uv=len(viewers), cart_users=len(cart_users),
            inquiry_users=len(inquirers), buyers=len(orders_per_buyer), orders=len(placed), gmv=gmv,
            refunds=refunds, repurchasers=sum(n >= 2 for n in orders_per_buyer.values()),
            converted_inquirers=len(converted_inquirers), median_response_seconds=median(response_seconds),
            returned=len(returned), review_count=len(reviews), rating_sum=sum(ratings), ratings=len(ratings),
            negative_ratings=sum(rating <= 2 for rating in ratings),
        )
    )


@dataclass(frozen=True)
class KpiCounts(KpiTotals):
    """What the KPIs are ratios of: counts and sums over one range."""

    repurchasers: int
    converted_inquirers: int
    median_response_seconds: float | None
    returned: int
    review_count: int
    rating_sum: int
    ratings: int
    negative_ratings: int


def kpis_of(counts: KpiCounts) -> Kpis:
    """The KPIs from their counts, with SPEC.md's null for a zero denominator."""
    c = counts
    return Kpis(
        **{field.name: getattr(c, field.name) for field in fields(KpiTotals)},
        net_gmv=c.gmv - c.refunds,
        conversion_rate=ratio(c.buyers, c.uv),
        aov=ratio(c.gmv, c.orders),
        revenue_per_buyer=ratio(c.gmv, c.buyers),
        uv_value=ratio(c.gmv, c.uv),
        repurchase_rate=ratio(c.repurchasers, c.buyers),
        inquiry_rate=ratio(c.inquiry_users, c.uv),
        inquiry_conversion=ratio(c.converted_inquirers, c.inquiry_users),
        median_response_seconds=c.median_response_seconds,
        return_rate=ratio(c.returned, c.orders),
        review_count=c.review_count,
        avg_rating=ratio(c.rating_sum, c.ratings),
        negative_share=ratio(c.negative_ratings, c.ratings),
    )


def _ordered_within(history: History, inquiry: FunnelEvent) -> bool:
    """Whether the person completed an order in [t, t + 7 days] after this inquiry at t."""
    orders = history.orders_by_person.get(inquiry.person_key, [])
    first = bisect_left(orders, inquiry.occurred_at, key=lambda order: order.occurred_at)
    return first < len(orders) and orders[first].occurred_at <= inquiry.occurred_at + INQUIRY_FOLLOW_UP
