"""SPEC.md "Segment-compatible form": Segment messages mapped to native events, or ignored with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from libs.common.events import Event, ValidationContext, validate_event
from libs.common.segment import Ignored, SegmentMessageError, map_message, message_timestamp

RECEIVED_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CONTEXT = ValidationContext(received_at=RECEIVED_AT, currency="CNY")


def track(name: str, properties: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "userId": "u-1",
        "messageId": "msg-1",
        "timestamp": "2026-05-01T10:00:00+08:00",
        "properties": properties or {},
    } | fields


def mapped(message: Any, **options: Any) -> dict[str, Any]:
    result = map_message(message, received_at=RECEIVED_AT, **options)
    assert isinstance(result, dict), result
    return result


def published(message: Any, **options: Any) -> Event:
    """Map, then validate like ingest does: the mapping must yield a valid event."""
    return validate_event(mapped(message, **options), index=0, context=CONTEXT, native=False)


# --- track names ----------------------------------------------------------------------------------


def test_product_viewed_is_a_view_with_the_product():
    properties = {"product_id": "p-1", "name": "蓝牙耳机", "category": "数码", "price": 19.99, "tier": "引流款"}
    event = published(track("Product Viewed", properties))
    assert event.type == "view"
    assert event.product.model_dump(exclude_none=True) == {
        "product_id": "p-1", "name": "蓝牙耳机", "category": "数码", "price": Decimal("19.99"),
        "tier": "traffic_driver",
    }


def test_sku_stands_in_for_a_missing_product_id():
    assert published(track("Product Viewed", {"sku": 1234})).product.product_id == "1234"


def test_product_added_is_an_add_to_cart_with_quantity():
    event = published(track("Product Added", {"product_id": "p-1", "quantity": 3}))
    assert event.type == "add_to_cart"
    assert event.product.product_id == "p-1"
    assert event.quantity == 3


def test_product_added_without_quantity_counts_one():
    assert published(track("Product Added", {"product_id": "p-1"})).quantity == 1


def test_order_completed_maps_products_to_items_and_coupon_to_coupon_code():
    properties = {
        "order_id": "o-1",
        "total": 27.5,
        "revenue": 30,
        "discount": 2.5,
        "coupon": "SPRING",
        "currency": "CNY",
        "products": [
            {"product_id": "p-1", "quantity": 2, "price": 10, "category": "数码"},
            {"sku": "p-2", "price": 10},
        ],
    }
    event = published(track("Order Completed", properties))
    order = event.order
    assert event.type == "order"
    assert order.status == "completed"
    assert order.order_id == "o-1"
    assert order.total == Decimal("27.5")
    assert order.discount == Decimal("2.5")
    assert order.coupon_code == "SPRING"
    assert order.currency == "CNY"
    assert [item.model_dump(exclude_none=True) for item in order.items] == [
        {"product_id": "p-1", "category": "数码", "quantity": 2, "unit_price": Decimal(10)},
        {"product_id": "p-2", "quantity": 1, "unit_price": Decimal(10)},
    ]


def test_order_completed_total_falls_back_to_revenue():
    properties = {"order_id": "o-1", "revenue": 30, "products": [{"product_id": "p-1", "price": 30}]}
    assert published(track("Order Completed", properties)).order.total == Decimal(30)


def test_order_completed_in_another_currency_is_rejected_after_mapping():
    properties = {"order_id": "o-1", "total": 1, "currency": "USD", "products": [{"product_id": "p", "price": 1}]}
    event = mapped(track("Order Completed", properties))
    with pytest.raises(ValueError, match="currency 'USD' is not this deployment's currency 'CNY'"):
        validate_event(event, index=0, context=CONTEXT, native=False)


def test_order_refunded_is_a_refunded_order_with_refund_amount_from_total():
    event = published(track("Order Refunded", {"order_id": "o-1", "total": 12.5, "refund_reason": "破损"}))
    assert event.type == "order"
    assert event.order.status == "refunded"
    assert event.order.refund_amount == Decimal("12.5")
    assert event.order.refund_reason == "破损"
    assert event.order.total is None
    assert event.order.items == []


def test_order_refunded_without_total_leaves_refund_amount_to_the_order_total():
    assert published(track("Order Refunded", {"order_id": "o-1"})).order.refund_amount is None


def test_product_reviewed_carries_rating_and_review_body():
    event = published(track("Product Reviewed", {"product_id": "p-1", "rating": 4, "review_body": "音质很好👍",
                                                  "order_id": "o-1"}))
    assert event.type == "review"
    assert event.product.product_id == "p-1"
    assert event.review.model_dump(exclude_none=True) == {"rating": 4, "text": "音质很好👍", "order_id": "o-1"}


def test_inquiry_submitted_is_an_inquiry():
    event = published(track("Inquiry Submitted", {"inquiry_id": "q-1", "topic": "尺码", "response_seconds": 42}))
    assert event.type == "inquiry"
    assert event.inquiry.model_dump(exclude_none=True) == {"inquiry_id": "q-1", "topic": "尺码",
                                                           "response_seconds": 42}
    assert event.product is None


def test_inquiry_submitted_about_a_product_keeps_the_product():
    event = published(track("Inquiry Submitted", {"inquiry_id": "q-1", "product_id": "p-1"}))
    assert event.product.product_id == "p-1"


def test_track_properties_are_kept_as_properties():
    properties = {"product_id": "p-1", "颜色": "黑", "extra": None}
    assert published(track("Product Viewed", properties)).properties == properties


def test_a_track_that_maps_to_an_invalid_event_is_rejected_by_validation():
    with pytest.raises(ValueError, match="a view event needs product"):
        published(track("Product Viewed", {"name": "no id"}))


# --- identify -------------------------------------------------------------------------------------


def test_identify_keeps_traits():
    message = {"type": "identify", "userId": "u-1", "messageId": "m", "timestamp": "2026-05-01T10:00:00Z",
               "traits": {"name": "张三", "vip": True}}
    event = published(message)
    assert event.type == "identify"
    assert event.traits == {"name": "张三", "vip": True}


def test_identify_takes_traits_from_context_when_the_message_has_none():
    message = {"type": "identify", "anonymousId": "a-1", "timestamp": "2026-05-01T10:00:00Z",
               "context": {"traits": {"email": "a@example.com"}}}
    event = published(message)
    assert event.traits == {"email": "a@example.com"}
    assert event.person_key == "anon:a-1"


def test_identify_without_any_traits_still_maps_with_empty_traits():
    message = {"type": "identify", "userId": "u-1", "timestamp": "2026-05-01T10:00:00Z"}
    assert published(message).traits == {}


# --- ids and channel ------------------------------------------------------------------------------


def test_message_id_becomes_the_event_id():
    assert published(track("Product Viewed", {"product_id": "p"}, messageId="abc-123")).event_id == "abc-123"


def test_user_and_anonymous_ids_give_the_person_key():
    message = track("Product Viewed", {"product_id": "p"}, userId=None, anonymousId="a-9")
    assert published(message).person_key == "anon:a-9"
    both = track("Product Viewed", {"product_id": "p"}, anonymousId="a-9")
    assert published(both).person_key == "u-1"


def test_context_campaign_becomes_the_channel():
    campaign = {"name": "618大促", "source": "douyin", "medium": "cpc", "term": "耳机", "content": "banner-a"}
    event = published(track("Product Viewed", {"product_id": "p"}, context={"campaign": campaign}))
    assert event.channel.model_dump() == {"source": "douyin", "medium": "cpc", "campaign": "618大促",
                                          "term": "耳机", "content": "banner-a"}


def test_campaign_without_source_is_direct():
    event = published(track("Product Viewed", {"product_id": "p"}, context={"campaign": {"name": "x"}}))
    assert event.channel.source == "(direct)"
    assert event.channel.campaign == "x"


def test_no_campaign_is_direct():
    assert published(track("Product Viewed", {"product_id": "p"})).channel.source == "(direct)"


# --- ignored calls --------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["page", "screen", "group", "alias"])
def test_other_calls_are_ignored_with_a_reason_naming_them(call):
    result = map_message({"type": call, "userId": "u-1"}, received_at=RECEIVED_AT)
    assert result == Ignored(f"Segment {call!r} calls are not used by shoploop (only track and identify are)")


def test_unknown_track_names_are_ignored_with_a_reason_naming_them():
    result = map_message(track("Checkout Started"), received_at=RECEIVED_AT)
    assert isinstance(result, Ignored)
    assert result.reason.startswith("track event 'Checkout Started' has no shoploop mapping")
    assert "Product Viewed" in result.reason


def test_track_names_are_case_sensitive():
    assert isinstance(map_message(track("product viewed"), received_at=RECEIVED_AT), Ignored)


def test_the_route_supplies_the_call_type_for_single_message_routes():
    message = track("Product Viewed", {"product_id": "p"})
    del message["type"]
    event = mapped(message, default_type="track")
    assert event["type"] == "view"


@pytest.mark.parametrize("message", [["not", "an", "object"], "track", None])
def test_a_message_that_is_not_an_object_is_an_error(message):
    with pytest.raises(SegmentMessageError, match="a message must be a JSON object"):
        map_message(message, received_at=RECEIVED_AT)


def test_properties_that_are_not_an_object_are_an_error():
    with pytest.raises(SegmentMessageError, match="context and properties must be JSON objects"):
        map_message(track("Product Viewed") | {"properties": ["p-1"]}, received_at=RECEIVED_AT)


def test_order_products_that_are_not_objects_are_an_error():
    with pytest.raises(SegmentMessageError, match=r"^properties\.products must be a list of objects$"):
        map_message(track("Order Completed", {"order_id": "o", "products": ["p-1"]}), received_at=RECEIVED_AT)


# --- clock skew -----------------------------------------------------------------------------------


def timestamp_of(message: dict[str, Any], batch_sent_at: Any = None) -> datetime:
    return published(message, batch_sent_at=batch_sent_at).occurred_at


def test_without_sent_at_the_timestamp_is_taken_as_given():
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2026-05-01T18:00:00+08:00")
    assert timestamp_of(message) == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def test_sent_at_corrects_the_device_clock_skew():
    # The device clock is 2 hours behind: sent "10:00:10", received 12:00:00, event 10 s before sending.
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2026-05-01T10:00:00Z",
                    sentAt="2026-05-01T10:00:10Z")
    assert timestamp_of(message) == datetime(2026, 5, 1, 11, 59, 50, tzinfo=UTC)


def test_batch_sent_at_applies_when_the_message_has_none():
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2026-05-01T10:00:00Z")
    assert timestamp_of(message, batch_sent_at="2026-05-01T10:00:10Z") == datetime(2026, 5, 1, 11, 59, 50,
                                                                                    tzinfo=UTC)


def test_message_sent_at_takes_precedence_over_the_batch_sent_at():
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2026-05-01T10:00:00Z",
                    sentAt="2026-05-01T10:00:20Z")
    assert timestamp_of(message, batch_sent_at="2026-05-01T10:00:10Z") == datetime(2026, 5, 1, 11, 59, 40,
                                                                                    tzinfo=UTC)


def test_clock_skew_correction_works_across_offsets():
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2026-05-01T18:00:00+08:00",
                    sentAt="2026-05-01T10:00:05Z")
    assert timestamp_of(message) == datetime(2026, 5, 1, 11, 59, 55, tzinfo=UTC)


def test_clock_skew_correction_keeps_microseconds():
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2026-05-01T10:00:00.000001Z",
                    sentAt="2026-05-01T10:00:00.5Z")
    assert timestamp_of(message) == datetime(2026, 5, 1, 11, 59, 59, 500_001, tzinfo=UTC)


def test_without_a_timestamp_the_event_happened_when_received():
    message = track("Product Viewed", {"product_id": "p"})
    del message["timestamp"]
    assert timestamp_of(message) == RECEIVED_AT
    assert timestamp_of(message, batch_sent_at="2026-05-01T10:00:00Z") == RECEIVED_AT


def test_original_timestamp_is_used_when_timestamp_is_absent():
    message = track("Product Viewed", {"product_id": "p"}, originalTimestamp="2026-05-01T10:00:00Z",
                    sentAt="2026-05-01T10:00:10Z")
    del message["timestamp"]
    assert timestamp_of(message) == datetime(2026, 5, 1, 11, 59, 50, tzinfo=UTC)


def test_an_unreadable_sent_at_is_an_error_naming_the_fields():
    message = track("Product Viewed", {"product_id": "p"}, sentAt="yesterday")
    with pytest.raises(SegmentMessageError, match=r"^timestamp/sentAt: 'yesterday' is not an RFC 3339 timestamp"):
        map_message(message, received_at=RECEIVED_AT)


@pytest.mark.parametrize(("timestamp", "sent_at"), [
    ("1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),  # corrected to before year 1
    ("9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"),  # corrected to after year 9999
    ("2026-05-01T10:00:00Z", "0001-01-01T00:00:00+01:00"),  # sentAt itself leaves the calendar
])
def test_a_correction_past_the_calendar_is_an_error_naming_the_fields(timestamp, sent_at):
    message = track("Product Viewed", {"product_id": "p"}, timestamp=timestamp, sentAt=sent_at)
    with pytest.raises(SegmentMessageError, match=r"^timestamp/sentAt: "):
        map_message(message, received_at=RECEIVED_AT)


def test_message_timestamp_is_rfc3339_utc_with_microseconds_when_corrected():
    message = {"timestamp": "2026-05-01T10:00:00Z", "sentAt": "2026-05-01T10:00:10Z"}
    assert message_timestamp(message, received_at=RECEIVED_AT, batch_sent_at=None) == "2026-05-01T11:59:50.000000Z"


def test_a_device_clock_far_ahead_is_corrected_rather_than_rejected_as_future():
    message = track("Product Viewed", {"product_id": "p"}, timestamp="2030-01-01T00:00:00Z",
                    sentAt="2030-01-01T00:00:01Z")
    assert timestamp_of(message) == datetime(2026, 5, 1, 11, 59, 59, tzinfo=UTC)


def test_explicit_null_timestamp_falls_back_to_original_timestamp():
    received = datetime(2026, 5, 1, 12, tzinfo=UTC)
    stamp = message_timestamp({"timestamp": None, "originalTimestamp": "2026-05-01T10:00:00Z"},
                              received_at=received, batch_sent_at=None)
    assert stamp == "2026-05-01T10:00:00Z"


def test_numeric_segment_user_id_becomes_a_string():
    mapped = map_message({"type": "track", "event": "Product Viewed", "userId": 42,
                          "timestamp": "2026-05-01T10:00:00Z", "properties": {"product_id": "p"}},
                         received_at=datetime(2026, 5, 1, 12, tzinfo=UTC))
    assert mapped["user_id"] == "42"
