"""Ingest answers any body with 200 or a 4xx carrying a reason, never a 5xx; and every event it accepts is one
each consumer reads back with the same models and can store (SPEC.md "Events": whatever ingest accepts, every
consumer can apply). The app runs in process with a publisher that keeps what it is given."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import (
    MAX_LINE_AMOUNT,
    MAX_NESTING,
    EventRejected,
    PublishedEvent,
    ValidationContext,
    validate_event,
)
from libs.common.kafka import EVENTS_TOPIC, REJECTED_TOPIC
from services.funnel.decoding import decode_event
from services.ingest.adapters.rejected import RejectedRecord
from services.ingest.bootstrap import create_ingest_app
from services.ingest.settings import IngestSettings
from tests.hostile_events import hostile_events, json_values, nested, received_now, segment_messages

ADMIN = {"Authorization": "Bearer dev-admin-key"}
_INT64 = 2**63


class KeepingPublisher:
    """Stands in for the broker: acknowledges everything and keeps it."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[bytes, bytes]]] = {EVENTS_TOPIC: [], REJECTED_TOPIC: []}

    async def publish_many(self, topic: str, records: list[tuple[bytes, bytes]], *, wait_seconds: float) -> None:
        self.records[topic].extend(records)


@pytest.fixture(scope="module")
def ingest(tmp_path_factory):
    settings = IngestSettings(database_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ingest')}/ingest.db")
    app = create_ingest_app(settings)
    publisher = KeepingPublisher()
    app.state.service.publisher = publisher
    # One loop for the module: the database (rate buckets) is opened on it, and every request runs on it.
    loop = asyncio.new_event_loop()
    loop.run_until_complete(app.state.service.database.start())
    app.state.test_loop = loop
    yield app, publisher
    loop.run_until_complete(app.state.service.database.close())
    loop.close()


def _post(app: Any, path: str, body: bytes) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
            return await client.post(path, content=body, headers={**ADMIN, "Content-Type": "application/json"})

    return app.state.test_loop.run_until_complete(call())


def consumers_can_apply(payload: bytes) -> None:
    """What a consumer does with a published event: parse it (funnel and segmentation alike) and store its rows,
    every stored integer fitting a 64-bit column."""
    event = PublishedEvent.from_json(payload)
    stored = decode_event(payload)
    for row in (stored.row or (), *stored.items):
        for value in row:
            if isinstance(value, int):
                assert -_INT64 <= value < _INT64, value
            if isinstance(value, str):
                assert "\x00" not in value
    assert event.person_key


def _check(app: Any, publisher: KeepingPublisher, path: str, body: bytes) -> httpx.Response:
    before = {topic: len(records) for topic, records in publisher.records.items()}
    answer = _post(app, path, body)
    assert answer.status_code < 500, answer.text
    if answer.status_code != 200:
        assert 400 <= answer.status_code < 500 and answer.json()["detail"], answer.text
        return answer
    result = answer.json()
    assert all(item["error"] for item in result["rejected"])
    accepted = publisher.records[EVENTS_TOPIC][before[EVENTS_TOPIC]:]
    assert len(accepted) == result["accepted"]
    for _key, payload in accepted:
        consumers_can_apply(payload)
    for _key, payload in publisher.records[REJECTED_TOPIC][before[REJECTED_TOPIC]:]:
        RejectedRecord.model_validate_json(payload)  # ingest's own consumer of rejections reads it back
    return answer


def _json(body: Any) -> bytes:
    # The standard library writes integers past 64 bits (orjson refuses them), as a client may.
    return json.dumps(body, ensure_ascii=False).encode()


_SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@_SLOW
@given(events=st.lists(hostile_events(received_now()), min_size=1, max_size=5))
def test_hostile_native_events_get_200_or_a_4xx_and_accepted_ones_are_consumable(ingest, events):
    app, publisher = ingest
    _check(app, publisher, "/v1/events", _json({"events": events}))


@_SLOW
@given(batch=st.lists(segment_messages(received_now()), min_size=1, max_size=4),
       sent_at=st.sampled_from([None, "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]))
def test_hostile_segment_batches_get_200_or_a_4xx(ingest, batch, sent_at):
    app, publisher = ingest
    _check(app, publisher, "/v1/batch", _json({"batch": batch, "sentAt": sent_at}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, path=st.sampled_from(["/v1/events", "/v1/batch", "/v1/track", "/v1/identify"]))
def test_any_json_body_gets_200_or_a_4xx(ingest, body, path):
    app, publisher = ingest
    _check(app, publisher, path, _json(body))


def test_a_body_nesting_past_any_event_is_refused_whole(ingest):
    app, publisher = ingest
    deep = {"type": "view", "user_id": "u-1", "properties": nested(500)}
    answer = _check(app, publisher, "/v1/events", _json({"events": [deep]}))
    assert answer.status_code == 400 and "nests deeper" in answer.json()["detail"]


# --- the bounds, each with a reason naming the field --------------------------------------------------------

CONTEXT = ValidationContext(received_at=received_now(), currency="CNY")


def order(**item: Any) -> dict[str, Any]:
    line = {"product_id": "p-1", "quantity": 1, "unit_price": "1.00"} | item
    return {"type": "order", "user_id": "u-1", "occurred_at": "2026-01-01T00:00:00Z",
            "order": {"order_id": "o-1", "status": "completed", "total": "1.00",
                      "items": [{"product_id": "p-0", "quantity": 1, "unit_price": "0"}, line]}}


def reason(raw: dict[str, Any]) -> str:
    with pytest.raises(EventRejected) as rejected:
        validate_event(raw, index=0, context=CONTEXT)
    return rejected.value.reason


def test_the_largest_amounts_and_quantities_are_accepted():
    event = validate_event(order(quantity=1_000_000, unit_price="1000000.00") | {}, index=0, context=CONTEXT)
    assert event.order.items[1].quantity * event.order.items[1].unit_price == MAX_LINE_AMOUNT
    validate_event(order(unit_price="1000000000000.00"), index=0, context=CONTEXT)


@pytest.mark.parametrize(("item", "expected"), [
    ({"unit_price": "1000000000000.01"}, "order.items[1].unit_price: Input should be less than or equal to"),
    ({"quantity": 1_000_001}, "order.items[1].quantity: Input should be less than or equal to 1000000"),
    ({"quantity": 2, "unit_price": "500000000000.01"}, "order.items[1]: quantity x unit_price is 1000000000000.02"),
    ({"unit_price": "0.001"}, "order.items[1].unit_price: Decimal input should have no more than 2 decimal places"),
])
def test_amounts_and_quantities_past_the_bounds_are_rejected_naming_the_field(item, expected):
    assert reason(order(**item)).startswith(expected)


@pytest.mark.parametrize("field", ["event_id", "user_id", "anonymous_id", "session_id"])
@pytest.mark.parametrize("character", ["\x00", "\x01", "\n", "\x7f", "\x9f"])
def test_control_characters_in_an_identifier_are_rejected(field, character):
    raw = {"type": "view", "user_id": "u-1", "occurred_at": "2026-01-01T00:00:00Z", "product": {"product_id": "p"},
           field: f"a{character}b"}
    assert reason(raw) == f"{field}: must not contain control characters (U+0000-U+001F, U+007F-U+009F)"


@pytest.mark.parametrize(("path", "raw"), [
    ("product.product_id", {"type": "view", "product": {"product_id": "p\x00"}}),
    ("inquiry.inquiry_id", {"type": "inquiry", "inquiry": {"inquiry_id": "q\x1f"}}),
    ("order.order_id", {"type": "order", "order": {"order_id": "o\x00", "status": "refunded"}}),
    ("order.coupon_code", {"type": "order", "order": {"order_id": "o", "status": "refunded", "coupon_code": "c\n"}}),
    ("order.items[0].product_id", {"type": "order", "order": {"order_id": "o", "status": "refunded", "items": [
        {"product_id": "p\x00", "quantity": 1, "unit_price": 1}]}}),
])
def test_control_characters_in_nested_identifiers_are_rejected(path, raw):
    raw = {"user_id": "u-1", "occurred_at": "2026-01-01T00:00:00Z"} | raw
    assert reason(raw).startswith(f"{path}: must not contain control characters")


def test_free_text_keeps_control_characters_but_not_nul():
    raw = {"type": "view", "user_id": "u-1", "occurred_at": "2026-01-01T00:00:00Z",
           "product": {"product_id": "p", "name": "line\none\ttab\x01"}}
    assert validate_event(raw, index=0, context=CONTEXT).product.name == "line\none\ttab\x01"
    raw["product"]["name"] = "a\x00b"
    assert reason(raw) == "product.name: must not contain the NUL character (U+0000)"


def test_properties_nest_at_most_32_levels():
    raw = {"type": "view", "user_id": "u-1", "occurred_at": "2026-01-01T00:00:00Z", "product": {"product_id": "p"}}
    event = validate_event(raw | {"properties": nested(MAX_NESTING)}, index=0, context=CONTEXT)
    consumers_can_apply(event.to_json())
    assert reason(raw | {"properties": nested(MAX_NESTING + 1)}) == "properties: nests deeper than 32 levels"


@pytest.mark.parametrize("moment", ["1969-12-31T23:59:59.999999Z", "1970-01-01T00:59:59+01:00"])
def test_times_before_1970_are_rejected(moment):
    raw = {"type": "view", "user_id": "u-1", "occurred_at": moment, "product": {"product_id": "p"}}
    assert reason(raw).startswith("occurred_at: Input should be greater than or equal to 1970-01-01")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_times_whose_offset_leaves_the_calendar_are_rejected_not_raised(moment):
    raw = {"type": "view", "user_id": "u-1", "occurred_at": moment, "product": {"product_id": "p"}}
    assert reason(raw).startswith(f"occurred_at: {moment!r} is not a valid date and time")
