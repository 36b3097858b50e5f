"""Small builders for behaviour events, so that tests read as the shop's story."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

from services.funnel.domain.facts import DIRECT, FunnelEvent, OrderFacts, OrderItem

T0 = datetime(2026, 3, 1, tzinfo=UTC)
_ids = count()


def at(
    days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0, microseconds: int = 0
) -> datetime:
    """An instant relative to T0, 2026-03-01 00:00 UTC."""
    return T0 + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, microseconds=microseconds)


def _event_id(event_id: str | None) -> str:
    return event_id if event_id is not None else f"e{next(_ids):06d}"


def view(
    person: str,
    when: datetime,
    product: str = "p1",
    *,
    source: str = DIRECT,
    category: str | None = None,
    price: str | None = None,
    name: str | None = None,
    tier: str | None = None,
    event_id: str | None = None,
) -> FunnelEvent:
    return FunnelEvent(
        _event_id(event_id),
        "view",
        person,
        when,
        source,
        product_id=product,
        product_name=name,
        category=category,
        price=Decimal(price) if price is not None else None,
        declared_tier=tier,
    )


def cart(
    person: str,
    when: datetime,
    product: str = "p1",
    *,
    source: str = DIRECT,
    category: str | None = None,
    quantity: int = 1,
    event_id: str | None = None,
) -> FunnelEvent:
    return FunnelEvent(
        _event_id(event_id),
        "add_to_cart",
        person,
        when,
        source,
        product_id=product,
        category=category,
        quantity=quantity,
    )


def inquiry(
    person: str,
    when: datetime,
    product: str | None = None,
    *,
    response_seconds: float | None = None,
    source: str = DIRECT,
    event_id: str | None = None,
) -> FunnelEvent:
    return FunnelEvent(
        _event_id(event_id),
        "inquiry",
        person,
        when,
        source,
        product_id=product,
        inquiry_id=f"q-{person}-{when.isoformat()}",
        response_seconds=response_seconds,
    )


def review(
    person: str, when: datetime, rating: int, product: str = "p1", *, event_id: str | None = None
) -> FunnelEvent:
    return FunnelEvent(_event_id(event_id), "review", person, when, product_id=product, rating=rating)


def item(
    product: str = "p1", quantity: int = 1, unit_price: str = "10", category: str | None = None
) -> OrderItem:
    return OrderItem(product, category, quantity, Decimal(unit_price))


def order(
    person: str,
    when: datetime,
    order_id: str,
    total: str | None = "10",
    items: tuple[OrderItem, ...] | None = None,
    *,
    source: str = DIRECT,
    event_id: str | None = None,
) -> FunnelEvent:
    """A completed order; by default one unit of p1 at the total."""
    lines = items if items is not None else (item("p1", 1, total or "10"),)
    facts = OrderFacts(order_id, "completed", lines, Decimal(total) if total is not None else None)
    return FunnelEvent(_event_id(event_id), "order", person, when, source, order=facts)


def refund(
    person: str, when: datetime, order_id: str, amount: str | None = None, *, event_id: str | None = None
) -> FunnelEvent:
    facts = OrderFacts(order_id, "refunded", refund_amount=Decimal(amount) if amount is not None else None)
    return FunnelEvent(_event_id(event_id), "order", person, when, order=facts)
