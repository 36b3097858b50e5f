"""Order channels and channel metrics, SPEC.md "Definitions" -> "Channel of an order"."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from services.funnel.domain.facts import DIRECT, FunnelEvent, History, utc
from services.funnel.domain.stats import ratio, total

CHANNEL_LOOKBACK = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class ChannelMetrics:
    source: str
    uv: int
    buyers: int
    orders: int
    gmv: Decimal
    conversion_rate: float | None
    uv_value: Decimal | None
    new_customers: int
    spend: Decimal | None
    roas: Decimal | None
    cac: Decimal | None


def order_channels(events: Iterable[FunnelEvent], as_of: datetime) -> dict[str, str]:
    """The channel source of every order counted at as_of, by order_id (SPEC.md "Channel of an order")."""
    history = History(events, as_of)
    return _order_channels(history)


def channel_metrics(
    events: Iterable[FunnelEvent],
    start: datetime,
    end: datetime,
    as_of: datetime,
    spend: Mapping[str, Decimal] | None = None,
) -> list[ChannelMetrics]:
    """Per source over [start, end), with roas and cac where spend for the range is given (SPEC.md "Channel")."""
    history = History(events, as_of)
    start, end = utc(start), utc(end)
    spend = spend or {}
    channels = _order_channels(history)

    viewers: dict[str, set[str]] = defaultdict(set)
    for event in history.events.between(start, end):
        if event.type == "view":
            viewers[event.source].add(event.person_key)
    placed: dict[str, list[FunnelEvent]] = defaultdict(list)
    for order in history.orders.between(start, end):
        placed[channels[order.order.order_id]].append(order)
    new_customers: dict[str, int] = defaultdict(int)
    for orders in history.orders_by_person.values():
        if start <= (first_order := orders[0]).occurred_at < end:
            new_customers[channels[first_order.order.order_id]] += 1

    metrics = []
    for source in sorted(viewers.keys() | placed.keys() | new_customers.keys() | spend.keys()):
        uv = len(viewers[source])
        buyers = len({order.person_key for order in placed[source]})
        gmv = total(order.order.amount for order in placed[source])
        source_spend = spend.get(source)
        metrics.append(
            ChannelMetrics(
                source=source,
                uv=uv,
                buyers=buyers,
                orders=len(placed[source]),
                gmv=gmv,
                conversion_rate=ratio(buyers, uv),
                uv_value=ratio(gmv, uv),
                new_customers=new_customers[source],
                spend=source_spend,
                roas=None if source_spend is None else roas(gmv, source_spend),
                cac=None if source_spend is None else cac(source_spend, new_customers[source]),
            )
        )
    return metrics


def roas(gmv: Decimal, spend: Decimal) -> Decimal | None:
    """Return on ad spend: the channel's gmv / its spend, None without spend (SPEC.md "Spend")."""
    return ratio(gmv, spend)


def cac(spend: Decimal, new_customers: int) -> Decimal | None:
    """Customer acquisition cost: spend / new_customers, None without new customers (SPEC.md "Spend")."""
    return ratio(spend, new_customers)


def _order_channels(history: History) -> dict[str, str]:
    touches: dict[str, list[FunnelEvent]] = defaultdict(list)
    for event in history.events.items:
        if event.source != DIRECT:
            touches[event.person_key].append(event)
    return {
        order.order.order_id: _channel(order, touches[order.person_key]) for order in history.orders.items
    }


def _channel(order: FunnelEvent, touches: list[FunnelEvent]) -> str:
    """The order's own source, else the person's latest sourced event in [t - 30 days, t), else direct."""
    if order.source != DIRECT:
        return order.source
    # touches are in (time, event_id) order, so the one just before t is the latest, ties to the larger id.
    before = bisect_left(touches, order.occurred_at, key=lambda touch: touch.occurred_at)
    if before and touches[before - 1].occurred_at >= order.occurred_at - CHANNEL_LOOKBACK:
        return touches[before - 1].source
    return DIRECT
