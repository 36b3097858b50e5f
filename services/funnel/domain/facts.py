"""The facts the funnel reads from behaviour events, and the SPEC.md order and product rules over them."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from operator import attrgetter
from typing import Generic, Literal, Protocol, TypeVar

EventType = Literal["view", "add_to_cart", "inquiry", "order", "review"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "add_to_cart", "inquiry", "order", "review")


def check_event_type(event_type: str) -> None:
    """ValueError unless ``event_type`` is one of SPEC.md's event types."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")


DIRECT = "(direct)"


def utc(moment: datetime) -> datetime:
    """The same instant in UTC; naive datetimes are refused because their instant is unknown."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware: {moment!r}")
    # Arithmetic and comparison between datetimes sharing one ZoneInfo are wall-clock, not elapsed time,
    # so every instant is held in UTC.
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_id: str
    category: str | None
    quantity: int
    unit_price: Decimal

    @property
    def amount(self) -> Decimal:
        """quantity x unit_price."""
        return self.quantity * self.unit_price


@dataclass(frozen=True, slots=True)
class OrderFacts:
    order_id: str
    status: Literal["completed", "refunded"]
    items: tuple[OrderItem, ...] = ()
    total: Decimal | None = None
    discount: Decimal | None = None
    coupon_code: str | None = None
    refund_amount: Decimal | None = None

    @property
    def amount(self) -> Decimal:
        """The order's total, or the sum of its lines when the event left the total out."""
        return self.total if self.total is not None else sum((item.amount for item in self.items), Decimal(0))

    def amount_of(self, product_id: str) -> Decimal:
        """What this order spent on one product: quantity x unit_price over its lines for it."""
        return sum((item.amount for item in self.items if item.product_id == product_id), Decimal(0))


@dataclass(frozen=True, slots=True)
class FunnelEvent:
    event_id: str
    type: EventType
    person_key: str
    occurred_at: datetime
    source: str = DIRECT
    product_id: str | None = None
    product_name: str | None = None
    category: str | None = None
    price: Decimal | None = None
    declared_tier: str | None = None
    quantity: int = 1
    inquiry_id: str | None = None
    response_seconds: float | None = None
    order: OrderFacts | None = None
    rating: int | None = None

    def __post_init__(self) -> None:
        check_event_type(self.type)
        if (self.type == "order") != (self.order is not None):
            raise ValueError("order facts go with, and only with, order events")
        object.__setattr__(self, "occurred_at", utc(self.occurred_at))

    @property
    def product_ids(self) -> tuple[str, ...]:
        """The products this event is about: its product, or an order's items in item order."""
        if self.order is not None:
            return tuple(dict.fromkeys(item.product_id for item in self.order.items))
        return () if self.product_id is None else (self.product_id,)


@dataclass(frozen=True, slots=True)
class Refund:
    event_id: str
    order_id: str
    occurred_at: datetime
    amount: Decimal


@dataclass(frozen=True, slots=True)
class ProductAttributes:
    name: str | None = None
    category: str | None = None
    price: Decimal | None = None
    declared_tier: str | None = None


class _Timed(Protocol):
    @property
    def occurred_at(self) -> datetime: ...


T = TypeVar("T", bound=_Timed)


class Timeline(Generic[T]):
    """Items in time order, sliced by time in O(log n)."""

    def __init__(self, items: Iterable[T]) -> None:
        self.items: tuple[T, ...] = tuple(items)
        self._times = [item.occurred_at for item in self.items]

    def between(self, start: datetime, end: datetime) -> Sequence[T]:
        """Items with start <= occurred_at < end."""
        return self.items[bisect_left(self._times, start) : bisect_left(self._times, end)]

    def trailing(self, after: datetime, until: datetime) -> Sequence[T]:
        """Items with after < occurred_at <= until, as in "the last N days"."""
        return self.items[bisect_right(self._times, after) : bisect_right(self._times, until)]


_chronological = attrgetter("occurred_at", "event_id")


class History:
    """The events known at as_of with the SPEC.md "Definitions" rules for orders, refunds and products applied."""

    def __init__(self, events: Iterable[FunnelEvent], as_of: datetime) -> None:
        self.as_of = utc(as_of)
        first_seen: dict[str, FunnelEvent] = {}
        for event in events:
            # The idempotency key counts an event once: the first arrival stands, as it does at ingest.
            first_seen.setdefault(event.event_id, event)
        known = (event for event in first_seen.values() if event.occurred_at <= self.as_of)
        self.events: Timeline[FunnelEvent] = Timeline(sorted(known, key=_chronological))

    @cached_property
    def _counting(self) -> dict[str, FunnelEvent]:
        counting: dict[str, FunnelEvent] = {}
        for event in self.events.items:
            if event.order is not None and event.order.status == "completed":
                counting.setdefault(event.order.order_id, event)
        return counting

    @cached_property
    def orders(self) -> Timeline[FunnelEvent]:
        """Each order's counting event: its earliest completed one (SPEC.md "Definitions", Orders)."""
        return Timeline(self._counting.values())

    @cached_property
    def _counting_event_ids(self) -> set[str]:
        return {event.event_id for event in self._counting.values()}

    def counts_as_order(self, event: FunnelEvent) -> bool:
        """Whether this is its order's counting completed event (SPEC.md "Definitions", Orders)."""
        return event.event_id in self._counting_event_ids

    @cached_property
    def orders_by_person(self) -> dict[str, list[FunnelEvent]]:
        """Each person's counted orders in time order."""
        orders_by_person: dict[str, list[FunnelEvent]] = defaultdict(list)
        for order in self.orders.items:
            orders_by_person[order.person_key].append(order)
        return dict(orders_by_person)

    @cached_property
    def refunds(self) -> Timeline[Refund]:
        """Refunds of orders whose completed event is known (SPEC.md "Definitions", Orders)."""
        return Timeline(
            Refund(event.event_id, event.order.order_id, event.occurred_at, amount)
            for event in self.events.items
            if event.order is not None
            and event.order.status == "refunded"
            and (amount := _refund_amount(event.order, self._counting)) is not None
        )

    @cached_property
    def refunded_order_ids(self) -> set[str]:
        """Orders with at least one counted refund."""
        return {refund.order_id for refund in self.refunds.items}

    @cached_property
    def products(self) -> dict[str, ProductAttributes]:
        """Attributes of every product known at as_of (SPEC.md "Definitions": product attributes)."""
        return _product_attributes(self.events.items)

    def category_of(self, product_id: str) -> str | None:
        """The product's latest category (SPEC.md "Definitions": product attributes)."""
        attributes = self.products.get(product_id)
        return attributes.category if attributes else None


def _refund_amount(refund: OrderFacts, counting: dict[str, FunnelEvent]) -> Decimal | None:
    # A refund of an order whose completed event is not known yet counts for nothing, not even zero.
    completed = counting.get(refund.order_id)
    if completed is None:
        return None
    return refund.refund_amount if refund.refund_amount is not None else completed.order.amount


def _product_attributes(known: Sequence[FunnelEvent]) -> dict[str, ProductAttributes]:
    carried: dict[str, dict[str, object]] = defaultdict(dict)
    # In time order (ties by event_id) a later carrier overwrites, so each attribute ends as its latest.
    for event in known:
        if event.product_id is not None:
            fields = carried[event.product_id]
            for field, value in (
                ("name", event.product_name),
                ("category", event.category),
                ("price", event.price),
                ("declared_tier", event.declared_tier),
            ):
                if value is not None:
                    fields[field] = value
        for item in event.order.items if event.order is not None else ():
            fields = carried[item.product_id]
            if item.category is not None:
                fields["category"] = item.category
    return {product_id: ProductAttributes(**fields) for product_id, fields in carried.items()}
