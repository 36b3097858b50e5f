"""Sorting a request's events into accepted, rejected (with raw body and reason) and ignored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from libs.common.events import ValidationContext
from services.ingest.intake import sort_out

RECEIVED_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CONTEXT = ValidationContext(received_at=RECEIVED_AT, currency="CNY")


def view(**overrides: Any) -> dict[str, Any]:
    return {"type": "view", "user_id": "u-1", "occurred_at": "2026-05-01T10:00:00+08:00",
            "product": {"product_id": "p-1", "name": "蓝牙耳机"}} | overrides


def track(name: str, properties: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": "u-1", "timestamp": "2026-05-01T10:00:00Z",
            "properties": properties} | fields


def native(raws: list[Any]):
    return sort_out(raws, fmt="native", route="/v1/events", context=CONTEXT)


def segment(raws: list[Any], **options: Any):
    return sort_out(raws, fmt="segment", route="/v1/batch", context=CONTEXT, **options)


# --- native ---------------------------------------------------------------------------------------


def test_valid_native_events_are_accepted_in_request_order():
    outcome = native([view(event_id="e-1"), view(event_id="e-2", type="add_to_cart", quantity=2)])
    assert [event.event_id for event in outcome.events] == ["e-1", "e-2"]
    assert outcome.answer() == {"accepted": 2, "rejected": [], "ignored": []}
    assert outcome.rejections == []


def test_identical_events_at_different_indexes_get_different_derived_ids():
    outcome = native([view(), view()])
    first, second = (event.event_id for event in outcome.events)
    assert first != second


def test_rejected_native_events_carry_index_and_reason_and_the_rest_are_accepted():
    bad_quantity = view(type="add_to_cart", quantity=0)
    no_person = {key: value for key, value in view().items() if key != "user_id"}
    outcome = native([view(event_id="ok-0"), bad_quantity, view(event_id="ok-2"), no_person])
    assert [event.event_id for event in outcome.events] == ["ok-0", "ok-2"]
    assert outcome.answer() == {
        "accepted": 2,
        "rejected": [
            {"index": 1, "error": "quantity: Input should be greater than or equal to 1"},
            {"index": 3, "error": "one of user_id or anonymous_id is required"},
        ],
        "ignored": [],
    }


def test_each_rejection_keeps_the_raw_body_and_the_reason():
    bad = view(colour="红", properties={"备注": "😀"})
    outcome = native([view(), bad])
    [record] = outcome.rejections
    assert record.raw == bad
    assert record.index == 1
    assert record.error == "colour: unknown field (custom data goes under properties)"
    assert record.format == "native"
    assert record.route == "/v1/events"
    assert record.received_at == RECEIVED_AT
    assert uuid.UUID(record.rejection_id)


def test_a_non_object_item_is_rejected_and_kept_as_sent():
    outcome = native(["not an event", 42])
    assert outcome.rejected == [{"index": 0, "error": "an event must be a JSON object"},
                                {"index": 1, "error": "an event must be a JSON object"}]
    assert [record.raw for record in outcome.rejections] == ["not an event", 42]


def test_rejections_get_distinct_ids():
    outcome = native([{}, {}, {}])
    assert len({record.rejection_id for record in outcome.rejections}) == 3


def test_rejection_records_serialise_to_json_with_unicode_intact():
    bad = view(quantity=0, product={"product_id": "p-1", "name": "限量款🎧"})
    [record] = native([bad]).rejections
    payload = orjson.loads(orjson.dumps(record.model_dump(mode="json")))
    assert payload["raw"] == bad
    assert payload["index"] == 0
    assert datetime.fromisoformat(payload["received_at"]) == RECEIVED_AT


def test_native_identify_is_rejected_not_ignored():
    outcome = native([{"type": "identify", "user_id": "u-1", "occurred_at": "2026-05-01T10:00:00Z",
                       "traits": {"vip": True}}])
    assert outcome.events == []
    assert outcome.ignored == []
    assert outcome.rejected == [{"index": 0, "error": "type: type must be one of view, add_to_cart, inquiry, "
                                                      "order, review"}]


def test_an_empty_request_accepts_nothing():
    assert native([]).answer() == {"accepted": 0, "rejected": [], "ignored": []}


# --- segment --------------------------------------------------------------------------------------


def test_segment_messages_are_mapped_and_accepted():
    outcome = segment([
        track("Product Viewed", {"product_id": "p-1"}, messageId="m-1"),
        {"type": "identify", "userId": "u-1", "messageId": "m-2", "traits": {"name": "张三"}},
    ])
    assert [(event.event_id, event.type) for event in outcome.events] == [("m-1", "view"), ("m-2", "identify")]
    assert outcome.answer()["accepted"] == 2


def test_ignored_segment_calls_are_listed_with_their_index_and_reason():
    outcome = segment([
        {"type": "page", "userId": "u-1", "name": "Home"},
        track("Product Viewed", {"product_id": "p-1"}),
        track("Checkout Started", {}),
    ])
    assert len(outcome.events) == 1
    assert outcome.rejected == []
    assert outcome.ignored[0] == {
        "index": 0, "reason": "Segment 'page' calls are not used by shoploop (only track and identify are)",
    }
    assert outcome.ignored[1]["index"] == 2
    assert outcome.ignored[1]["reason"].startswith("track event 'Checkout Started' has no shoploop mapping")


def test_segment_messages_that_map_to_invalid_events_are_rejected_with_the_raw_message():
    invalid = track("Product Viewed", {"name": "no product id"})
    outcome = segment([invalid])
    assert outcome.rejected == [{"index": 0, "error": "a view event needs product"}]
    [record] = outcome.rejections
    assert record.raw == invalid
    assert record.format == "segment"
    assert record.route == "/v1/batch"


def test_unreadable_segment_messages_are_rejected_with_the_mapping_reason():
    outcome = segment(["nope", track("Product Viewed", {"product_id": "p"}, sentAt="later")])
    assert outcome.rejected[0] == {"index": 0, "error": "a message must be a JSON object"}
    assert outcome.rejected[1]["index"] == 1
    assert outcome.rejected[1]["error"].startswith("timestamp/sentAt: 'later' is not an RFC 3339 timestamp")


def test_batch_sent_at_corrects_every_message_without_its_own():
    outcome = segment([track("Product Viewed", {"product_id": "p"}),
                       track("Product Viewed", {"product_id": "p"}, sentAt="2026-05-01T10:00:20Z")],
                      batch_sent_at="2026-05-01T10:00:10Z")
    assert [event.occurred_at for event in outcome.events] == [
        datetime(2026, 5, 1, 11, 59, 50, tzinfo=UTC),
        datetime(2026, 5, 1, 11, 59, 40, tzinfo=UTC),
    ]


def test_batch_level_context_applies_to_messages_without_their_own():
    batch_context = {"campaign": {"source": "wechat", "medium": "social", "name": "会员日"}}
    outcome = segment([track("Product Viewed", {"product_id": "p"})],
                      segment_defaults={"context": batch_context})
    channel = outcome.events[0].channel
    assert (channel.source, channel.medium, channel.campaign) == ("wechat", "social", "会员日")


def test_a_messages_own_context_wins_over_the_batch_context():
    batch_context = {"campaign": {"source": "wechat"}}
    own = track("Product Viewed", {"product_id": "p"}, context={"campaign": {"source": "douyin"}})
    outcome = segment([own], segment_defaults={"context": batch_context})
    assert outcome.events[0].channel.source == "douyin"


def test_single_message_routes_supply_the_call_type_as_a_default():
    message = {"userId": "u-1", "event": "Product Viewed", "properties": {"product_id": "p"}}
    outcome = sort_out([message], fmt="segment", route="/v1/track", context=CONTEXT,
                       segment_defaults={"type": "track"})
    assert [event.type for event in outcome.events] == ["view"]


def test_batch_defaults_are_not_stored_into_the_rejected_raw_body():
    invalid = track("Product Viewed", {})
    outcome = segment([invalid], segment_defaults={"context": {"campaign": {"source": "wechat"}}})
    assert outcome.rejections[0].raw == invalid
