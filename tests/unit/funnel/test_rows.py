"""The consumer decodes records straight into rows: they must be exactly the rows of the facts
(``fact_of`` -> ``fact_rows``), which the read side and the tests' expectations are built on."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from libs.common.events import Event, PublishedEvent
from services.funnel.adapters.facts import EVENT_ROW, ITEM_ROW, fact_rows
from services.funnel.decoding import decode_event, stored_rows
from services.funnel.handlers import fact_of

PRODUCT = {"product_id": "p-1", "name": "真丝连衣裙", "category": "裙装", "price": "399.90", "tier": "引流款"}
BASES: list[dict[str, Any]] = [
    {"user_id": "u-1", "occurred_at": "2026-05-01T10:00:00.123456+08:00", "channel": {"source": "douyin"}},
    {"anonymous_id": "a-1", "occurred_at": "1999-12-31T23:59:59Z"},
]
PARTS: list[dict[str, Any]] = [
    {"type": "view", "product": PRODUCT},
    {"type": "view", "product": {"product_id": "p-2"}},
    {"type": "add_to_cart", "product": {"product_id": "p-3", "price": 0.01}, "quantity": 3},
    {"type": "inquiry", "inquiry": {"inquiry_id": "q-1", "response_seconds": 12.5}},
    {"type": "inquiry", "product": PRODUCT, "inquiry": {"inquiry_id": "q-2", "topic": "尺码"}},
    {"type": "review", "product": PRODUCT, "review": {"rating": 1, "text": "太小了"}},
    {"type": "order", "order": {"order_id": "o-1", "status": "completed", "total": "1234.5", "discount": 10,
                                "coupon_code": "C1", "items": [
                                    {"product_id": "p-1", "category": "裙装", "quantity": 2, "unit_price": "0.05"},
                                    {"product_id": "p-2", "quantity": 1, "unit_price": 99}]}},
    {"type": "order", "order": {"order_id": "o-1", "status": "refunded", "refund_amount": "1000000000000.00"}},
    {"type": "order", "order": {"order_id": "o-2", "status": "refunded"}},
    {"type": "identify", "traits": {"email": "x@example.com"}},
]


def published(body: dict[str, Any], n: int) -> bytes:
    """A record as ingest publishes it."""
    return Event.model_validate({"event_id": f"e-{n}", **body}).to_json()


RECORDS = [published(base | part, n) for n, (base, part) in enumerate(itertools.product(BASES, PARTS))]
EVENTS = [PublishedEvent.from_json(record) for record in RECORDS]


def test_decoded_rows_are_the_rows_of_the_facts():
    event_rows, item_rows = stored_rows([decode_event(record) for record in RECORDS])
    facts = [fact for event in EVENTS if (fact := fact_of(event)) is not None]
    want_events, want_items = fact_rows(facts)
    assert event_rows == [tuple(row[name] for name in EVENT_ROW) for row in want_events]
    assert item_rows == [tuple(row[name] for name in ITEM_ROW) for row in want_items]
    assert len(event_rows) == len(EVENTS) - len(BASES)  # identify calls are not kept
    assert len(item_rows) == 2 * len(BASES)


@pytest.mark.parametrize(("record", "event"), list(zip(RECORDS, EVENTS, strict=True)),
                         ids=[f"{event.type}-{event.event_id}" for event in EVENTS])
def test_each_row_has_every_column_in_order(record, event):
    decoded = decode_event(record)
    assert (decoded.event_id, decoded.occurred_at) == (event.event_id, event.occurred_at)  # what the runtime reads
    if event.type == "identify":
        assert decoded.row is None and decoded.items == ()
        return
    row = decoded.row
    assert len(row) == len(EVENT_ROW)
    named = dict(zip(EVENT_ROW, row, strict=True))
    assert (named["event_id"], named["type"], named["person_key"]) == (event.event_id, event.type, event.person_key)


def test_a_record_that_is_not_a_published_event_is_refused():
    with pytest.raises(ValidationError):
        decode_event(b'{"type": "view", "occurred_at": "2026-05-01T00:00:00Z", "surprise": 1}')
    with pytest.raises(ValidationError):
        decode_event(b'{"type": "order", "occurred_at": "2026-05-01T00:00:00Z", '
                     b'"order": {"order_id": "o", "status": "completed", "total": "1.001"}}')
