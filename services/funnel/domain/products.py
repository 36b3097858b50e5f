"""Product metrics, product matrix and product lifecycle, SPEC.md "Definitions" -> "Product metrics" onwards."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from services.funnel.domain.facts import FunnelEvent, History, utc
from services.funnel.domain.stats import median, ratio, share_above, share_below

Tier = Literal["flagship", "traffic_driver", "profit", "long_tail"]
Lifecycle = Literal["introduction", "inactive", "growth", "decline", "maturity"]
MATRIX_PERIOD = timedelta(days=30)
LIFECYCLE_PERIOD = timedelta(days=28)


@dataclass(frozen=True)
class ProductMetrics:
    product_id: str
    name: str | None
    category: str | None
    views: int
    uv: int
    cart_users: int
    buyers: int
    units: int
    gmv: Decimal
    conversion_rate: float | None
    uv_value: Decimal | None
    review_count: int
    avg_rating: float | None
    negative_share: float | None
    return_rate: float | None
    inquiry_count: int


@dataclass(frozen=True)
class MatrixEntry:
    product_id: str
    name: str | None
    category: str | None
    price: Decimal | None
    uv: int
    units: int
    gmv: Decimal
    suggested_tier: Tier
    declared_tier: str | None
    lifecycle: Lifecycle


def product_metrics(
    events: Iterable[FunnelEvent], start: datetime, end: datetime, as_of: datetime
) -> list[ProductMetrics]:
    """Per product with activity in [start, end), by product_id (SPEC.md "Product metrics")."""
    history = History(events, as_of)
    start, end = utc(start), utc(end)
    activity: dict[str, list[FunnelEvent]] = defaultdict(list)
    for event in history.events.between(start, end):
        if event.order is None and event.product_id is not None:
            activity[event.product_id].append(event)
    placed = history.orders.between(start, end)
    orders: dict[str, list[FunnelEvent]] = defaultdict(list)
    for order in placed:
        for product_id in order.product_ids:
            orders[product_id].append(order)
    units, gmv = _sales(placed)

    metrics = []
    for product_id in sorted(activity.keys() | orders.keys()):
        viewers = {e.person_key for e in activity[product_id] if e.type == "view"}
        ratings = [e.rating for e in activity[product_id] if e.type == "review" and e.rating is not None]
        bought = orders[product_id]
        buyers = {order.person_key for order in bought}
        attributes = history.products[product_id]
        metrics.append(
            ProductMetrics(
                product_id=product_id,
                name=attributes.name,
                category=attributes.category,
                views=sum(e.type == "view" for e in activity[product_id]),
                uv=len(viewers),
                cart_users=len({e.person_key for e in activity[product_id] if e.type == "add_to_cart"}),
                buyers=len(buyers),
                units=units[product_id],
                gmv=gmv[product_id],
                conversion_rate=ratio(len(buyers), len(viewers)),
                uv_value=ratio(gmv[product_id], len(viewers)),
                review_count=sum(e.type == "review" for e in activity[product_id]),
                avg_rating=ratio(sum(ratings), len(ratings)),
                negative_share=ratio(sum(rating <= 2 for rating in ratings), len(ratings)),
                return_rate=ratio(
                    sum(order.order.order_id in history.refunded_order_ids for order in bought), len(bought)
                ),
                inquiry_count=sum(e.type == "inquiry" for e in activity[product_id]),
            )
        )
    return metrics


@dataclass(frozen=True)
class _Standing:
    """A product's figures over the matrix period."""

    product_id: str
    category: str | None
    price: Decimal | None
    uv: int
    units: int
    gmv: Decimal


def product_matrix(events: Iterable[FunnelEvent], as_of: datetime) -> list[MatrixEntry]:
    """Suggested beside declared tier, with lifecycle, of products viewed in the last 30 days (SPEC.md "Product matrix")."""
    history = History(events, as_of)
    recent = (history.as_of - MATRIX_PERIOD, history.as_of)
    viewers: dict[str, set[str]] = defaultdict(set)
    for event in history.events.trailing(*recent):
        if event.type == "view" and event.product_id is not None:
            viewers[event.product_id].add(event.person_key)
    units, gmv = _sales(history.orders.trailing(*recent))
    population = [
        _Standing(p, history.category_of(p), history.products[p].price, len(viewers[p]), units[p], gmv[p])
        for p in sorted(viewers)
    ]
    peers: dict[str | None, list[_Standing]] = defaultdict(list)
    for standing in population:
        peers[standing.category].append(standing)
    lifecycles = _lifecycles(history)
    return [
        MatrixEntry(
            product_id=standing.product_id,
            name=history.products[standing.product_id].name,
            category=standing.category,
            price=standing.price,
            uv=standing.uv,
            units=standing.units,
            gmv=standing.gmv,
            suggested_tier=_suggested_tier(standing, population, peers[standing.category]),
            declared_tier=history.products[standing.product_id].declared_tier,
            lifecycle=lifecycles[standing.product_id],
        )
        for standing in population
    ]


def _suggested_tier(product: _Standing, population: Sequence[_Standing], peers: Sequence[_Standing]) -> Tier:
    """The first of the four SPEC.md "Product matrix" rules that holds.

    Price comparisons run over the category's priced products only: a product without a price has no place
    below or above another. Products without a category are compared with each other.
    """
    peer_prices = [peer.price for peer in peers if peer.price is not None]
    if product.price is not None:
        if share_below(product.price, peer_prices) >= Fraction(9, 10) and product.units <= median(
            peer.units for peer in peers
        ):
            return "flagship"
        if share_above(product.uv, [other.uv for other in population]) < Fraction(1, 5) and (
            product.price <= median(peer_prices)
        ):
            return "traffic_driver"
    if product.gmv > 0 and share_above(product.gmv, [other.gmv for other in population]) < Fraction(1, 5):
        return "profit"
    return "long_tail"


def product_lifecycles(events: Iterable[FunnelEvent], as_of: datetime) -> dict[str, Lifecycle]:
    """Lifecycle stage of every product known at as_of, by product_id (SPEC.md "Product lifecycle")."""
    return _lifecycles(History(events, as_of))


def _lifecycles(history: History) -> dict[str, Lifecycle]:
    as_of = history.as_of
    first_seen: dict[str, datetime] = {}
    for event in history.events.items:
        for product_id in event.product_ids:
            first_seen.setdefault(product_id, event.occurred_at)
    last, _ = _sales(history.orders.trailing(as_of - LIFECYCLE_PERIOD, as_of))
    previous, _ = _sales(history.orders.trailing(as_of - 2 * LIFECYCLE_PERIOD, as_of - LIFECYCLE_PERIOD))
    return {
        product_id: _stage(seen > as_of - LIFECYCLE_PERIOD, last[product_id], previous[product_id])
        for product_id, seen in sorted(first_seen.items())
    }


def _stage(introduced: bool, last: int, previous: int) -> Lifecycle:
    if introduced:
        return "introduction"
    if last == previous == 0:
        return "inactive"
    # 1.2 and 0.8 as integer ratios so that the thresholds themselves fall exactly on the right side.
    if 5 * last > 6 * previous:
        return "growth"
    if 5 * last < 4 * previous:
        return "decline"
    return "maturity"


def _sales(orders: Iterable[FunnelEvent]) -> tuple[Counter[str], defaultdict[str, Decimal]]:
    """Units and gmv (quantity x unit_price) per product over these orders."""
    units: Counter[str] = Counter()
    gmv: defaultdict[str, Decimal] = defaultdict(Decimal)
    for order in orders:
        for item in order.order.items:
            units[item.product_id] += item.quantity
            gmv[item.product_id] += item.amount
    return units, gmv
