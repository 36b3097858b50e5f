"""Published events straight into the funnel's rows, for the consumer.

The consumer's decode step (``decode_event``) parses a record with the shared ``PublishedEvent`` (so a record
is accepted exactly as every consumer accepts it; a bad one is dead-lettered by the runtime) and writes the
rows that keep its facts, in the tables' column order, without building the intermediate ``FunnelEvent``: the
handler then only inserts them. (A hand-written orjson path that checked the same constraints was tried: its
Python checks cost as much as pydantic's parse, about 12 us per event, so the shared model stays.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.common.db import cents
from libs.common.events import PublishedEvent, epoch_micros


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One consumed record: the `events` row (``EVENT_ROW`` order; None for identify calls, which are not
    kept) and its `order_items` rows (``ITEM_ROW``). ``event_id`` and ``occurred_at`` serve the runtime."""

    event_id: str
    occurred_at: datetime
    row: tuple[Any, ...] | None
    items: tuple[tuple[Any, ...], ...] = ()


def rows_of(event: PublishedEvent) -> StoredEvent:
    """The rows keeping one parsed event's facts: what ``fact_of`` keeps, in the tables' column order."""
    event_id = event.event_id
    if event.type == "identify":
        return StoredEvent(event_id, event.occurred_at, None)  # type: ignore[arg-type]
    product, order, inquiry, review = event.product, event.order, event.inquiry, event.review
    row: tuple[Any, ...] = (event_id, event.type, event.person_key, epoch_micros(event.occurred_at), event.channel.source)
    if product is None:
        row += _NO_PRODUCT
    else:
        row += (product.product_id, product.name, product.category, cents(product.price), product.tier)
    row += (event.quantity,)
    row += _NO_INQUIRY if inquiry is None else (inquiry.inquiry_id, inquiry.response_seconds)
    items: tuple[tuple[Any, ...], ...] = ()
    if order is None:
        row += _NO_ORDER
    else:
        row += (order.order_id, order.status, cents(order.total), cents(order.discount), order.coupon_code,
                cents(order.refund_amount))
        items = tuple((event_id, line, item.product_id, item.category, item.quantity, cents(item.unit_price))
                      for line, item in enumerate(order.items))
    return StoredEvent(event_id, event.occurred_at, (*row, None if review is None else review.rating), items)  # type: ignore[arg-type]


_NO_PRODUCT = (None,) * 5
_NO_INQUIRY = (None,) * 2
_NO_ORDER = (None,) * 6
def decode_event(payload: bytes) -> StoredEvent:
    """The rows of one published record; raises (pydantic's ValidationError) for a record that is not one."""
    return rows_of(PublishedEvent.from_json(payload))


def stored_rows(batch: Sequence[StoredEvent]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch's `events` rows and `order_items` rows, for ``store_rows``."""
    event_rows = [event.row for event in batch if event.row is not None]
    item_rows = [item for event in batch if event.items for item in event.items]
    return event_rows, item_rows
