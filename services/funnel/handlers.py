"""The funnel's consumer side: behaviour events into stored facts, erasure requests into pseudonyms.

Handlers run inside the consumer runtime's transaction. Erasure requests are claimed by the runtime (a request
is applied once); behaviour events are not: the events table, keyed by event_id, leaves a stored one alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import PublishedEvent, epoch_micros
from libs.common.privacy import ErasureRequest
from services.funnel.adapters.facts import cents, pseudonymise_persons, store_rows
from services.funnel.domain.facts import FunnelEvent, OrderFacts, OrderItem


def fact_of(event: PublishedEvent) -> FunnelEvent | None:
    """The facts the funnel keeps of one published event; None for `identify` calls, which carry no behaviour."""
    if event.type == "identify":
        return None
    product, order = event.product, event.order
    return FunnelEvent(
        event_id=event.event_id,
        type=event.type,
        person_key=event.person_key,
        occurred_at=event.occurred_at,
        source=event.channel.source,
        product_id=product and product.product_id,
        product_name=product and product.name,
        category=product and product.category,
        price=product and product.price,
        declared_tier=product and product.tier,
        quantity=event.quantity,
        inquiry_id=event.inquiry and event.inquiry.inquiry_id,
        response_seconds=event.inquiry and event.inquiry.response_seconds,
        order=order and OrderFacts(
            order_id=order.order_id,
            status=order.status,
            items=tuple(OrderItem(i.product_id, i.category, i.quantity, i.unit_price) for i in order.items),
            total=order.total,
            discount=order.discount,
            coupon_code=order.coupon_code,
            refund_amount=order.refund_amount,
        ),
        rating=event.review and event.review.rating,
    )


def rows_of(batch: Sequence[PublishedEvent]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The `events` rows (``EVENT_ROW`` order) and `order_items` rows (``ITEM_ROW``) keeping the batch's facts:
    what ``fact_of`` keeps, written straight from the published event (identify calls are left out)."""
    event_rows: list[tuple[Any, ...]] = []
    item_rows: list[tuple[Any, ...]] = []
    for event in batch:
        kind = event.type
        if kind == "identify":
            continue
        product, order, inquiry, review = event.product, event.order, event.inquiry, event.review
        row: tuple[Any, ...] = (event.event_id, kind, event.person_key, epoch_micros(event.occurred_at),
                                event.channel.source)
        if product is None:
            row += _NO_PRODUCT
        else:
            row += (product.product_id, product.name, product.category, cents(product.price), product.tier)
        row += (event.quantity,)
        row += _NO_INQUIRY if inquiry is None else (inquiry.inquiry_id, inquiry.response_seconds)
        if order is None:
            row += _NO_ORDER
        else:
            row += (order.order_id, order.status, cents(order.total), cents(order.discount), order.coupon_code,
                    cents(order.refund_amount))
            event_id = event.event_id
            for line, item in enumerate(order.items):
                item_rows.append((event_id, line, item.product_id, item.category, item.quantity,
                                  cents(item.unit_price)))
        event_rows.append((*row, None if review is None else review.rating))
    return event_rows, item_rows


_NO_PRODUCT = (None,) * 5
_NO_INQUIRY = (None,) * 2
_NO_ORDER = (None,) * 6


async def record_events(connection: AsyncConnection, batch: Sequence[PublishedEvent]) -> Sequence[PublishedEvent]:
    """Keep every behaviour event as facts; answers are computed from them at query time. Returns the events
    applied now: all but those whose event_id was stored before (the consumer runs without claims, the
    events table's key is the idempotency record)."""
    stored_before = await store_rows(connection, *rows_of(batch))
    if not stored_before:
        return batch
    return [event for event in batch if event.event_id not in stored_before]


_PSEUDONYM_NAMESPACE = uuid.UUID("0b5bb0a6-58f4-4f0e-9a59-8f1f3a7b2c11")


def pseudonym_of(request: ErasureRequest) -> str:
    """A stable stand-in for the erased person: derived from the request, so nothing leads back to the person."""
    return f"erased:{uuid.uuid5(_PSEUDONYM_NAMESPACE, request.request_id)}"


async def erase_persons(connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
    """Drop the persons' keys from their stored events; every count stays what it was."""
    await pseudonymise_persons(connection, {request.person_key: pseudonym_of(request) for request in requests})

