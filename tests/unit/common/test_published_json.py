"""``published_fields`` (the published event's checks compiled for ingest's form) against ``PublishedEvent``:
a record is accepted by the consumers' fast path only if the model accepts it, and what each consumer keeps of it
(the funnel's rows, segmentation's ``CustomerEvent``) is the same whichever path read the record. Records: what ingest publishes of hostile client events, and published
records with one value replaced by hostile JSON, re-encoded in several ways (escapes, raw control bytes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import (
    MAX_NESTING,
    MAX_RESPONSE_SECONDS,
    EventRejected,
    PublishedEvent,
    ValidationContext,
    validate_event,
)
from libs.common.published_json import published_fields
from services.funnel.decoding import StoredEvent, decode_event, rows_of
from services.segmentation import decoding as segmentation
from tests.hostile_events import (
    hostile_events,
    identifiers,
    json_values,
    money,
    nested,
    quantities,
    received_now,
    timestamps,
)

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
CONTEXT = ValidationContext(received_at=NOW, currency="CNY")

BASE = {"event_id": "e-1", "user_id": "u-1", "occurred_at": "2026-05-01T10:00:00.5Z", "session_id": "s-1",
        "channel": {"source": "douyin", "medium": "cpc"}}
VALID: list[dict[str, Any]] = [
    BASE | {"type": "view", "product": {"product_id": "p-1", "name": "真丝连衣裙", "category": "裙装", "price": "399.9",
                                        "tier": "引流款"}},
    BASE | {"type": "add_to_cart", "product": {"product_id": "p-2", "price": 0.01}, "quantity": 3},
    BASE | {"type": "inquiry", "inquiry": {"inquiry_id": "q-1", "topic": "尺码", "response_seconds": 12}},
    BASE | {"type": "review", "product": {"product_id": "p-1"}, "review": {"rating": 2, "text": "小", "order_id": "o-1"}},
    BASE | {"type": "order", "order": {"order_id": "o-1", "status": "completed", "total": "1000000000000.00",
                                       "discount": "10", "coupon_code": "C1", "currency": "CNY", "items": [
                                           {"product_id": "p-1", "category": "裙装", "quantity": 1_000_000,
                                            "unit_price": "0.05"}]}},
    BASE | {"type": "order", "order": {"order_id": "o-1", "status": "refunded", "refund_amount": "1.5",
                                       "refund_reason": "太大"}},
    {"anonymous_id": "a-1", "occurred_at": "1970-01-01T00:00:00Z", "type": "identify",
     "traits": {"vip": True, "age": 31, "city": "杭州", "tags": ["a", 1.5]}},
]


def _published(raw: dict[str, Any]) -> bytes:
    return validate_event(raw, index=0, context=CONTEXT, native=raw["type"] != "identify").to_json()


PUBLISHED = [_published(raw) for raw in VALID]


def _old(payload: bytes) -> StoredEvent | None:
    """What the consumer did before the fast path: the model, then its rows (None: refused)."""
    try:
        return rows_of(PublishedEvent.from_json(payload))
    except ValueError:  # pydantic's ValidationError
        return None


def _typed(row: tuple[Any, ...] | None) -> Any:
    return None if row is None else [(type(value), value) for value in row]


def _customer_typed(event: segmentation.CustomerEvent) -> Any:
    return [*_typed(event[:-2]), _typed(event.order), (type(event.traits), event.traits)]


def assert_same_as_the_model(payload: bytes) -> None:
    old = _old(payload)
    fields = published_fields(payload)
    if old is None:
        assert fields is None, "the fast path accepted a record the model refuses"
        with pytest.raises(ValueError):
            decode_event(payload)
        with pytest.raises(ValueError):
            segmentation.decode_event(payload)
        return
    new = decode_event(payload)
    assert (new.event_id, new.occurred_at) == (old.event_id, old.occurred_at)
    assert _typed(new.row) == _typed(old.row)
    assert [_typed(item) for item in new.items] == [_typed(item) for item in old.items]
    try:
        want = segmentation.customer_event(PublishedEvent.from_json(payload))
    except TypeError:  # traits holding an integer past 64 bits, which orjson cannot write: refused either way
        with pytest.raises(TypeError):
            segmentation.decode_event(payload)
        return
    assert _customer_typed(segmentation.decode_event(payload)) == _customer_typed(want)


def test_every_published_form_takes_the_fast_path():
    for payload in PUBLISHED:
        assert published_fields(payload) is not None, payload
        assert_same_as_the_model(payload)


@pytest.mark.parametrize("payload", [
    b"", b"[]", b"null", b'"x"', b"{}", b'{"type": "view"}', b"\xef\xbb\xbf" + PUBLISHED[0],
    PUBLISHED[0].replace(b'"e-1"', b'"e\\u0001"'), PUBLISHED[0].replace(b'"e-1"', b'"e\x7f"'),
    PUBLISHED[0].replace(b'"e-1"', '"e\x85"'.encode()), PUBLISHED[0].replace(b'"e-1"', '"e\xa0"'.encode()),
    PUBLISHED[0].replace(b'"e-1"', b'"e\\"1"'), PUBLISHED[0].replace(b'"u-1"', b'"' + b"x" * 257 + b'"'),
    PUBLISHED[0].replace(b'"u-1"', b'"' + b"x" * 256 + b'"'), PUBLISHED[0].replace(b'"u-1"', b'""'),
    PUBLISHED[0].replace(b'"2026-05-01T10:00:00.500000Z"', b'"1969-12-31T23:59:59.999999Z"'),
    PUBLISHED[0].replace(b'"2026-05-01T10:00:00.500000Z"', b'"2026-02-30T10:00:00Z"'),
    PUBLISHED[0].replace(b'"2026-05-01T10:00:00.500000Z"', "\"２０２６-05-01T10:00:00Z\"".encode()),
    PUBLISHED[0].replace(b'"399.9"', b'"1000000000000.01"'), PUBLISHED[0].replace(b'"399.9"', b'"399.901"'),
    PUBLISHED[0].replace(b'"399.9"', "\"３99.90\"".encode()), PUBLISHED[0].replace(b'"399.9"', b'399.9'),
    PUBLISHED[0].replace(b'"399.9"', b'"-0.00"'), PUBLISHED[0].replace(b'"399.9"', b'"1E+2"'),
    PUBLISHED[1].replace(b'"quantity":3', b'"quantity":3.0'), PUBLISHED[1].replace(b'"quantity":3', b'"quantity":true'),
    PUBLISHED[1].replace(b'"quantity":3', b'"quantity":1000001'), PUBLISHED[0].replace(b'"type":"view"', b'"type":"View"'),
    PUBLISHED[0].replace(b'"type":"view"', b'"type":"bogus","type":"view"'),
    PUBLISHED[0].replace(b'"type":"view"', b'"type":"view","type":"bogus"'),
    PUBLISHED[2].replace(b'"response_seconds":12.0', b'"response_seconds":1e400'),
    PUBLISHED[2].replace(b'"response_seconds":12.0', b'"response_seconds":-0.0'),
    PUBLISHED[2].replace(b'"response_seconds":12.0', b'"response_seconds":9007199254740993'),
    PUBLISHED[0][:-1] + b',"properties":{"a":18446744073709551616}}', PUBLISHED[0][:-1] + b',"properties":{"a":1e400}}',
    PUBLISHED[0][:-1] + b',"surprise":1}', PUBLISHED[0][:-1] + b',"channel":null}',
    PUBLISHED[6].replace(b'"age":31', b'"age":-9223372036854775809'),
])
def test_edge_records_are_read_as_the_model_reads_them(payload):
    assert_same_as_the_model(payload)


@pytest.mark.parametrize("absent", ["person_key", "channel", "event_id", "received_at"])
def test_records_without_a_defaulted_field_are_read_as_the_model_reads_them(absent):
    for payload in PUBLISHED:
        record = orjson.loads(payload)
        record.pop(absent, None)
        assert_same_as_the_model(orjson.dumps(record))


# Every value of a published record, by path, replaced by something hostile.
def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    if isinstance(value, dict):
        return {**value, path[0]: new if len(path) == 1 else _replaced(value[path[0]], path[1:], new)}
    return [_replaced(item, path[1:], new) if n == path[0] else item for n, item in enumerate(value)]


_LINE = {"product_id": "p-1", "quantity": 1, "unit_price": "1.00"}
# The bounds of SPEC.md "Events" that the strategies above do not reach.
BOUNDS = ["x" * 4096, "x" * 4097, "x" * 16_384, "x" * 16_385, "x" * 16, "x" * 17, "y" * 260, "y" * 261,
          0, 5, 6, MAX_RESPONSE_SECONDS, MAX_RESPONSE_SECONDS + 1, float(MAX_RESPONSE_SECONDS),
          MAX_RESPONSE_SECONDS + 0.5, [_LINE] * 1000, [_LINE] * 1001, [], {}, nested(MAX_NESTING),
          nested(MAX_NESTING + 1), "completed", "refunded", "identify", "profit", "引流款", "1000000000000.00",
          "1000000000000.01", "0", "0.0", "00.01", 2**53, 2**53 + 1, -1, 1.0, True, None]
hostile_values = st.one_of(json_values, identifiers, money, quantities, timestamps(NOW), st.sampled_from(BOUNDS),
                           st.text(st.characters(codec="utf-8"), max_size=8))


def _encodings(value: Any) -> st.SearchStrategy[bytes]:
    return st.sampled_from([
        lambda: orjson.dumps(value), lambda: json.dumps(value).encode(),
        lambda: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ]).map(lambda encode: encode())


@pytest.mark.parametrize("bound", BOUNDS, ids=lambda bound: repr(bound)[:24])
def test_every_value_at_each_bound_is_read_as_the_model_reads_it(bound):
    for payload in PUBLISHED:
        record = orjson.loads(payload)
        for path in _paths(record):
            assert_same_as_the_model(orjson.dumps(_replaced(record, path, bound)))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_published_record_with_any_value_replaced_is_read_as_the_model_reads_it(data):
    record = orjson.loads(data.draw(st.sampled_from(PUBLISHED)))
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from([*_paths(record), ("properties",), ("surprise",)]))
        record = _replaced(record, path, data.draw(hostile_values))
    try:
        payload = data.draw(_encodings(record))
    except (TypeError, ValueError, UnicodeEncodeError):  # e.g. an integer orjson cannot write
        return
    assert_same_as_the_model(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=hostile_events(received_now()), as_published=st.booleans())
def test_hostile_events_are_read_as_the_model_reads_them(raw, as_published):
    """What ingest publishes of a hostile event; and the hostile object itself as if it had been published."""
    if raw.get("event_id") is None:  # ingest derives one with orjson, which the values its parser gives fit
        raw["event_id"] = "e-hostile"
    if as_published:
        try:
            payload = validate_event(raw, index=0, context=ValidationContext(received_now(), "CNY")).to_json()
        except EventRejected:
            return
        assert published_fields(payload) is not None or b"\\" in payload or b"\x7f" in payload \
            or "\x85".encode() in payload or b"\xc2" in payload
    else:
        try:
            payload = orjson.dumps(raw | {"person_key": raw.get("user_id") or ""})
        except TypeError:  # an integer past 64 bits
            return
    assert_same_as_the_model(payload)
