"""Published events straight into what the segmentation consumer stores of them.

The consumer's decode step (``decode_event``) keeps of a record only the fields its facts are made of
(``CustomerEvent``), without building the pydantic ``PublishedEvent``: a record in the form ingest publishes is
checked and read by ``published_fields`` (``PublishedEvent``'s validation compiled for that form, shared with
the funnel's consumer); any other record is parsed by ``PublishedEvent`` itself and read by ``customer_event``.
Either way a record is accepted exactly as every consumer accepts it (a bad one is dead-lettered by the runtime)
and gives the same ``CustomerEvent`` (tests/unit/common/test_published_json.py holds the two paths equal on
hostile and boundary records). Per event: about a third of the model's CPU (docs/segmentation.md, "Consumer
throughput (branch consumer-throughput)").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from libs.common.db import cents
from libs.common.events import DIRECT, PublishedEvent, epoch_micros
from libs.common.published_json import published_decoder


class CustomerOrder(NamedTuple):
    """An order event's part the facts keep; money in integer cents."""

    order_id: str
    status: str
    total_cents: int | None
    refund_cents: int | None


class CustomerEvent(NamedTuple):
    """One consumed event as the segmentation facts keep it. ``event_id`` (None when the record has none) and
    ``occurred_at`` serve the runtime; ``traits`` is the identify call's traits as JSON text (None without)."""

    event_id: str | None
    person_key: str
    type: str
    occurred_at: datetime
    occurred_us: int
    source: str
    order: CustomerOrder | None
    traits: str | None


def customer_event(event: PublishedEvent) -> CustomerEvent:
    """What the facts keep of one parsed event."""
    order = event.order
    return CustomerEvent(
        event.event_id, event.person_key, event.type, event.occurred_at, epoch_micros(event.occurred_at),
        event.channel.source,
        None if order is None else CustomerOrder(order.order_id, order.status, cents(order.total),
                                                 cents(order.refund_amount)),
        None if event.traits is None else orjson.dumps(event.traits).decode(),
    )


def _customer_event_of_fields(fields: dict[str, Any]) -> CustomerEvent:
    """``customer_event`` for the object ``published_fields`` checked (money in cents, times datetimes)."""
    get = fields.get
    occurred_at, channel, order, traits = fields["occurred_at"], get("channel"), get("order"), get("traits")
    return CustomerEvent(
        get("event_id"), get("person_key", ""), fields["type"], occurred_at, epoch_micros(occurred_at),
        DIRECT if channel is None else channel.get("source", DIRECT),
        None if order is None else CustomerOrder(order["order_id"], order["status"], order.get("total"),
                                                 order.get("refund_amount")),
        None if traits is None else orjson.dumps(traits).decode(),
    )


# What the facts keep of one published record; raises (pydantic's ValidationError) for a record that is not one.
decode_event = published_decoder(customer_event, _customer_event_of_fields)
