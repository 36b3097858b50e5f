"""Published events straight into the funnel's rows, for the consumer.

The consumer's decode step (``decode_event``) writes the rows that keep a record's facts, in the tables' column
order, without building the intermediate ``FunnelEvent``: the handler then only inserts them. A record in the
form ingest publishes is checked and read by ``published_fields`` (``PublishedEvent``'s validation compiled for
that form: orjson and a few checks, without building the pydantic models); any other record is parsed by the
shared ``PublishedEvent`` itself. Either way a record is accepted exactly as every consumer accepts it (a bad
one is dead-lettered by the runtime) and gives the same rows (tests/unit/funnel/test_rows.py). Per event on a
quiet core: about 4 us instead of 12 (docs/benchmarks.md, "Consumer CPU per event").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from libs.common.db import cents
from libs.common.events import DIRECT, PublishedEvent, epoch_micros
from libs.common.published_json import published_decoder


class StoredEvent(NamedTuple):
    """One consumed record: the `events` row (``EVENT_ROW`` order; None for identify calls, which are not
    kept) and its `order_items` rows (``ITEM_ROW``). ``event_id`` and ``occurred_at`` serve the runtime. (A
    named tuple: built about 3x faster than a frozen dataclass, once per consumed event.)"""

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


def _rows_of_fields(fields: dict[str, Any]) -> StoredEvent:
    """``rows_of`` for the object ``published_fields`` checked (money already in cents, times datetimes)."""
    get = fields.get
    event_id, occurred_at, event_type = get("event_id"), fields["occurred_at"], fields["type"]
    if event_type == "identify":
        return StoredEvent(event_id, occurred_at, None)  # type: ignore[arg-type]
    channel, product, order, inquiry, review = (get("channel"), get("product"), get("order"), get("inquiry"),
                                                get("review"))
    items: tuple[tuple[Any, ...], ...] = ()
    if order is not None:
        items = tuple((event_id, line, item["product_id"], item.get("category"), item["quantity"], item["unit_price"])
                      for line, item in enumerate(order.get("items", ())))
    row = (event_id, event_type, get("person_key", ""), epoch_micros(occurred_at),
           DIRECT if channel is None else channel.get("source", DIRECT),
           *(_NO_PRODUCT if product is None else map(product.get, _PRODUCT_FIELDS)), get("quantity", 1),
           *(_NO_INQUIRY if inquiry is None else map(inquiry.get, _INQUIRY_FIELDS)),
           *(_NO_ORDER if order is None else map(order.get, _ORDER_FIELDS)),
           None if review is None else review["rating"])
    return StoredEvent(event_id, occurred_at, row, items)


# The rows of one published record; raises (pydantic's ValidationError) for a record that is not one.
decode_event = published_decoder(rows_of, _rows_of_fields)


# The parts' fields in the `events` columns' order (``EVENT_ROW``), as ``rows_of`` writes them.
_PRODUCT_FIELDS = ("product_id", "name", "category", "price", "tier")
_INQUIRY_FIELDS = ("inquiry_id", "response_seconds")
_ORDER_FIELDS = ("order_id", "status", "total", "discount", "coupon_code", "refund_amount")


def stored_rows(batch: Sequence[StoredEvent]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch's `events` rows and `order_items` rows, for ``store_rows``."""
    event_rows = [event.row for event in batch if event.row is not None]
    item_rows = [item for event in batch if event.items for item in event.items]
    return event_rows, item_rows
