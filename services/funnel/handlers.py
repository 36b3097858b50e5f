"""The funnel's consumer side: behaviour events into stored facts, erasure requests into pseudonyms.

Handlers run inside the consumer runtime's transaction. Erasure requests are claimed by the runtime (a request
is applied once); behaviour events are not: the events table, keyed by event_id, leaves a stored one alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import PublishedEvent
from libs.common.privacy import ErasureRequest
from services.funnel.adapters.facts import StoredRows, pseudonymise_persons, store_rows
from services.funnel.adapters.mirror import FactMirror
from services.funnel.decoding import StoredEvent, stored_rows
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


async def record_events(connection: AsyncConnection, batch: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
    """Keep every behaviour event as facts; answers are computed from them at query time. The consumer decodes
    records straight into rows (``decode_event``). Returns the events applied now: all but those whose event_id
    was stored before (the consumer runs without claims: the events table's key is the idempotency record)."""
    applied, _stored = await _record(connection, batch)
    return applied


async def _record(connection: AsyncConnection, batch: Sequence[StoredEvent]) -> tuple[Sequence[StoredEvent], StoredRows]:
    stored = await store_rows(connection, *stored_rows(batch))
    if not stored.stored_before:
        return batch, stored
    return [event for event in batch if event.event_id not in stored.stored_before], stored


class EventRecorder:
    """The events subscription's handler (``record_events``) and after-commit hook (``committed``): once the
    transaction has committed, the rows it stored go to the DuckDB copy as they are, so that the copy need
    not read them back from the database (about 10 us per event on SQLite)."""

    def __init__(self, copy: FactMirror) -> None:
        self.copy = copy
        self._in_hand: tuple[Sequence[StoredEvent], StoredRows] | None = None

    async def record_events(self, connection: AsyncConnection, batch: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
        applied, stored = await _record(connection, batch)
        self._in_hand = (applied, stored)
        return applied

    def committed(self, applied: Sequence[StoredEvent]) -> None:
        in_hand, self._in_hand = self._in_hand, None
        # The runtime calls this after the commit of the transaction whose handler call came last; the check
        # only makes sure of it (anything else is left to the copy's follow, which reads the database).
        if in_hand is None or len(in_hand[0]) != len(applied) or (applied and in_hand[0][-1] is not applied[-1]):
            return
        stored = in_hand[1]
        self.copy.written(stored.first_seq, stored.last_seq, stored.event_rows, stored.item_rows)


async def erase_persons(connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
    """Drop the persons' keys from their stored events; every count stays what it was."""
    await pseudonymise_persons(connection, {request.person_key: request.pseudonym for request in requests})

