"""SPEC.md "Events": the rules a client's event must pass, with the reason text the client sees."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.events import (
    Event,
    EventRejected,
    PublishedEvent,
    ValidationContext,
    epoch_micros,
    from_epoch_micros,
    validate_event,
)

RECEIVED_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CONTEXT = ValidationContext(received_at=RECEIVED_AT, currency="CNY")
RFC3339_EXAMPLE = "e.g. 2026-05-01T10:00:00+08:00"
UNKNOWN_FIELD = "unknown field (custom data goes under properties)"


def view(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "view",
        "user_id": "u-1",
        "occurred_at": "2026-05-01T10:00:00+08:00",
        "product": {"product_id": "p-1"},
    } | overrides


def add_to_cart(**overrides: Any) -> dict[str, Any]:
    return view(type="add_to_cart") | overrides


def review(**overrides: Any) -> dict[str, Any]:
    return view(type="review", review={"rating": 5}) | overrides


def inquiry(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "inquiry",
        "user_id": "u-1",
        "occurred_at": "2026-05-01T10:00:00+08:00",
        "inquiry": {"inquiry_id": "q-1"},
    } | overrides


def completed_order(**order_overrides: Any) -> dict[str, Any]:
    order = {
        "order_id": "o-1",
        "status": "completed",
        "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "9.50"}],
        "total": "19.00",
    } | order_overrides
    return {"type": "order", "user_id": "u-1", "occurred_at": "2026-05-01T10:00:00+08:00", "order": order}


def without(raw: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in raw.items() if name not in names}


def accept(raw: Any, *, index: int = 0, context: ValidationContext = CONTEXT, native: bool = True) -> Event:
    return validate_event(raw, index=index, context=context, native=native)


def reason_for(raw: Any, *, native: bool = True) -> str:
    with pytest.raises(EventRejected) as rejected:
        validate_event(raw, index=0, context=CONTEXT, native=native)
    return rejected.value.reason


# --- person key ---------------------------------------------------------------------------------


def test_person_key_is_the_user_id_when_both_ids_are_given():
    event = accept(view(user_id="u-7", anonymous_id="a-7"))
    assert event.person_key == "u-7"


def test_person_key_is_anon_prefixed_anonymous_id_without_a_user_id():
    event = accept(without(view(), "user_id") | {"anonymous_id": "a-7"})
    assert event.person_key == "anon:a-7"


def test_null_user_id_falls_back_to_the_anonymous_id():
    assert accept(view(user_id=None, anonymous_id="a-7")).person_key == "anon:a-7"


def test_empty_user_id_counts_as_absent_and_falls_back_to_the_anonymous_id():
    event = accept(view(user_id="", anonymous_id="a-7"))
    assert event.person_key == "anon:a-7"
    assert event.user_id is None


def test_empty_anonymous_id_counts_as_absent_next_to_a_user_id():
    event = accept(view(user_id="u-7", anonymous_id=""))
    assert event.person_key == "u-7"
    assert event.anonymous_id is None


@pytest.mark.parametrize(
    "ids",
    [{}, {"user_id": ""}, {"anonymous_id": ""}, {"user_id": "", "anonymous_id": ""},
     {"user_id": None, "anonymous_id": None}],
    ids=["neither", "empty-user", "empty-anonymous", "both-empty", "both-null"],
)
def test_an_event_without_any_person_id_is_rejected(ids):
    raw = without(view(), "user_id") | ids
    assert reason_for(raw) == "one of user_id or anonymous_id is required"


# --- occurred_at ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2026-05-01T10:00:00", "2026-05-01", "2026-05-01T10:00:00+0800",
                                   "1 May 2026 10:00"])
def test_occurred_at_without_an_offset_or_in_another_format_is_rejected(value):
    assert reason_for(view(occurred_at=value)) == (
        f"occurred_at: {value!r} is not an RFC 3339 timestamp with an offset, {RFC3339_EXAMPLE}"
    )


def test_occurred_at_as_a_unix_number_is_rejected():
    assert reason_for(view(occurred_at=1777600800)) == (
        f"occurred_at: must be an RFC 3339 timestamp string, {RFC3339_EXAMPLE}"
    )


def test_occurred_at_that_is_not_a_real_date_is_rejected():
    assert reason_for(view(occurred_at="2026-02-30T10:00:00+08:00")) == (
        "occurred_at: '2026-02-30T10:00:00+08:00' is not a valid date and time: day is out of range for month"
    )


@pytest.mark.parametrize("value", ["2026-05-01T02:00:00Z", "2026-05-01t02:00:00z", "2026-05-01T02:00:00+00:00",
                                   "2026-05-01T10:00:00+08:00", "2026-04-30T21:00:00-05:00"])
def test_occurred_at_with_any_offset_spelling_is_the_same_utc_instant(value):
    occurred_at = accept(view(occurred_at=value)).occurred_at
    assert occurred_at == datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
    assert occurred_at.utcoffset() == timedelta(0)


def test_occurred_at_is_normalised_to_utc_in_the_published_json():
    event = accept(view(occurred_at="2026-05-01T10:00:00.25+08:00"))
    assert event.occurred_at.tzinfo == UTC
    published = orjson.loads(event.to_json())["occurred_at"]
    assert published.endswith("Z")
    assert datetime.fromisoformat(published) == datetime(2026, 5, 1, 2, 0, 0, 250_000, tzinfo=UTC)


def test_fractional_seconds_finer_than_microseconds_are_truncated_not_rejected():
    event = accept(view(occurred_at="2026-05-01T10:00:00.123456789+08:00"))
    assert event.occurred_at == datetime(2026, 5, 1, 2, 0, 0, 123_456, tzinfo=UTC)


def test_occurred_at_exactly_five_minutes_in_the_future_is_accepted():
    event = accept(view(occurred_at="2026-05-01T12:05:00Z"))
    assert event.occurred_at == RECEIVED_AT + timedelta(minutes=5)


def test_occurred_at_one_microsecond_beyond_five_minutes_in_the_future_is_rejected():
    assert reason_for(view(occurred_at="2026-05-01T12:05:00.000001Z")) == (
        "occurred_at 2026-05-01T12:05:00.000001Z is more than 5 minutes in the future "
        "(server time 2026-05-01T12:00:00.000000Z)"
    )


def test_future_limit_compares_instants_across_offsets():
    # 20:05+08:00 is 12:05Z: exactly at the limit.
    assert accept(view(occurred_at="2026-05-01T20:05:00+08:00")).occurred_at == RECEIVED_AT + timedelta(minutes=5)
    assert "more than 5 minutes in the future" in reason_for(view(occurred_at="2026-05-01T20:05:01+08:00"))


def test_events_from_the_distant_past_are_accepted():
    assert accept(view(occurred_at="2019-01-01T00:00:00Z")).occurred_at.year == 2019


def test_received_at_is_the_servers_clock_not_the_clients():
    event = accept(view(received_at="2000-01-01T00:00:00Z"))
    assert event.received_at == RECEIVED_AT


# --- money ----------------------------------------------------------------------------------------


def with_price(price: Any) -> dict[str, Any]:
    return view(product={"product_id": "p-1", "price": price})


def test_float_money_is_kept_exactly_as_the_client_wrote_it():
    assert accept(with_price(19.99)).product.price == Decimal("19.99")
    assert accept(with_price(0.1)).product.price == Decimal("0.1")


def test_money_is_published_as_an_exact_decimal_string():
    assert orjson.loads(accept(with_price(19.99)).to_json())["product"]["price"] == "19.99"


@pytest.mark.parametrize(("price", "expected"), [("19.99", Decimal("19.99")), ("0.10", Decimal("0.10")),
                                                 (0, Decimal(0)), (7, Decimal(7))])
def test_numeric_strings_and_integers_are_accepted_as_money(price, expected):
    assert accept(with_price(price)).product.price == expected


@pytest.mark.parametrize("price", [1.005, "0.001", 12.345])
def test_money_with_more_than_two_decimals_is_rejected(price):
    assert reason_for(with_price(price)) == "product.price: Decimal input should have no more than 2 decimal places"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (with_price(-0.01), "product.price"),
        (completed_order(total=-1), "order.total"),
        (completed_order(discount="-5"), "order.discount"),
        (completed_order(items=[{"product_id": "p-1", "quantity": 1, "unit_price": -3}]),
         "order.items[0].unit_price"),
    ],
)
def test_negative_money_is_rejected_wherever_it_appears(raw, path):
    assert reason_for(raw) == f"{path}: Input should be greater than or equal to 0"


@pytest.mark.parametrize("flag", [True, False])
def test_boolean_money_is_rejected(flag):
    assert reason_for(with_price(flag)) == "product.price: must be a number, not a boolean"


@pytest.mark.parametrize("price", ["NaN", "Infinity"])
def test_money_that_is_not_finite_is_rejected(price):
    assert reason_for(with_price(price)) == "product.price: Input should be a finite number"


def test_money_that_is_not_a_number_is_rejected():
    assert reason_for(with_price("nineteen")) == "product.price: Input should be a valid decimal"


# --- quantity and rating --------------------------------------------------------------------------


def test_quantity_defaults_to_one():
    assert accept(add_to_cart()).quantity == 1


def test_quantity_is_kept():
    assert accept(add_to_cart(quantity=3)).quantity == 3


@pytest.mark.parametrize("quantity", [1.5, "2", True, 2.0])
def test_quantity_must_be_a_strict_integer(quantity):
    assert reason_for(add_to_cart(quantity=quantity)) == "quantity: Input should be a valid integer"


@pytest.mark.parametrize("quantity", [0, -1])
def test_quantity_below_one_is_rejected(quantity):
    assert reason_for(add_to_cart(quantity=quantity)) == "quantity: Input should be greater than or equal to 1"


def test_order_item_quantity_must_be_a_strict_integer():
    raw = completed_order(items=[{"product_id": "p-1", "quantity": "2", "unit_price": 1}])
    assert reason_for(raw) == "order.items[0].quantity: Input should be a valid integer"


@pytest.mark.parametrize("rating", [1, 2, 3, 4, 5])
def test_ratings_one_to_five_are_accepted(rating):
    assert accept(review(review={"rating": rating})).review.rating == rating


@pytest.mark.parametrize(("rating", "reason"), [
    (0, "review.rating: Input should be greater than or equal to 1"),
    (6, "review.rating: Input should be less than or equal to 5"),
    (4.5, "review.rating: Input should be a valid integer"),
    (4.0, "review.rating: Input should be a valid integer"),
    ("4", "review.rating: Input should be a valid integer"),
    (True, "review.rating: Input should be a valid integer"),
])
def test_rating_outside_one_to_five_or_not_an_integer_is_rejected(rating, reason):
    assert reason_for(review(review={"rating": rating})) == reason


# --- parts per type -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["view", "add_to_cart", "review"])
def test_product_is_required_for_view_add_to_cart_and_review(event_type):
    raw = without(review(type=event_type), "product")
    if event_type != "review":
        raw = without(raw, "review")
    assert reason_for(raw) == f"a {event_type} event needs product"


def test_product_is_optional_on_an_inquiry():
    assert accept(inquiry()).product is None
    assert accept(inquiry(product={"product_id": "p-1"})).product.product_id == "p-1"


@pytest.mark.parametrize(("raw", "reason"), [
    (without(inquiry(), "inquiry"), "an inquiry event needs inquiry"),
    (without(completed_order(), "order"), "an order event needs order"),
    (without(review(), "review"), "a review event needs review"),
])
def test_each_type_requires_its_own_part(raw, reason):
    assert reason_for(raw) == reason


@pytest.mark.parametrize(("part", "value", "owner"), [
    ("inquiry", {"inquiry_id": "q-1"}, "inquiry"),
    ("order", {"order_id": "o-1", "status": "refunded"}, "order"),
    ("review", {"rating": 4}, "review"),
])
def test_a_part_on_the_wrong_event_type_is_rejected(part, value, owner):
    assert reason_for(view(**{part: value})) == f"{part} belongs only on {owner} events, not on view"


def test_a_review_part_on_an_order_event_is_rejected():
    assert reason_for(completed_order() | {"review": {"rating": 4}}) == (
        "review belongs only on review events, not on order"
    )


def test_traits_are_refused_on_behaviour_events():
    assert reason_for(view(traits={"vip": True})) == "traits belong only on identify calls"


# --- orders ---------------------------------------------------------------------------------------


def test_completed_order_is_accepted_with_items_and_total():
    order = accept(completed_order(discount=1, coupon_code="SPRING")).order
    assert order.total == Decimal("19.00")
    assert order.items[0].quantity == 2
    assert order.items[0].unit_price == Decimal("9.50")
    assert order.coupon_code == "SPRING"


def test_completed_order_without_total_is_rejected():
    assert reason_for(completed_order(total=None)) == "order: a completed order needs total"


def test_completed_order_without_items_is_rejected():
    assert reason_for(completed_order(items=[])) == "order: a completed order needs at least one item"
    order = without(completed_order()["order"], "items")
    assert reason_for(completed_order() | {"order": order}) == "order: a completed order needs at least one item"


def test_refunded_order_may_omit_items_and_total():
    order = accept(completed_order() | {"order": {"order_id": "o-1", "status": "refunded"}}).order
    assert order.status == "refunded"
    assert order.items == []
    assert order.total is None
    assert order.refund_amount is None


def test_refunded_order_keeps_refund_amount_and_reason():
    raw = completed_order() | {"order": {"order_id": "o-1", "status": "refunded", "refund_amount": "5.50",
                                         "refund_reason": "尺码不合适"}}
    order = accept(raw).order
    assert order.refund_amount == Decimal("5.50")
    assert order.refund_reason == "尺码不合适"


def test_refund_amount_on_a_completed_order_is_rejected():
    assert reason_for(completed_order(refund_amount=1)) == (
        "order: refund_amount belongs on a refunded order event"
    )


def test_unknown_order_status_is_rejected():
    assert reason_for(completed_order(status="shipped")) == "order.status: Input should be 'completed' or 'refunded'"


def test_order_in_the_deployments_currency_is_accepted():
    assert accept(completed_order(currency="CNY")).order.currency == "CNY"


def test_order_in_another_currency_is_rejected():
    assert reason_for(completed_order(currency="USD")) == (
        "order.currency: currency 'USD' is not this deployment's currency 'CNY'"
    )


def test_the_currency_rule_follows_the_deployment_setting():
    usd = ValidationContext(received_at=RECEIVED_AT, currency="USD")
    assert accept(completed_order(currency="USD"), context=usd).order.currency == "USD"
    with pytest.raises(EventRejected, match="currency 'CNY' is not this deployment's currency 'USD'"):
        accept(completed_order(currency="CNY"), context=usd)


# --- channel, tiers, unknown fields, properties ---------------------------------------------------


@pytest.mark.parametrize("channel", [None, {}, {"source": ""}, {"source": None}, {"medium": "cpc"}],
                         ids=["null", "empty", "empty-source", "null-source", "no-source"])
def test_absent_or_empty_channel_source_is_direct(channel):
    raw = view() if channel is None else view(channel=channel)
    assert accept(raw).channel.source == "(direct)"


def test_missing_channel_is_direct():
    assert accept(without(view(), "channel")).channel.source == "(direct)"


def test_channel_utm_fields_are_kept():
    utm = {"source": "douyin", "medium": "cpc", "campaign": "618大促", "term": "耳机", "content": "banner-a"}
    assert accept(view(channel=utm)).channel.model_dump() == utm


@pytest.mark.parametrize(("alias", "tier"), [("形象款", "flagship"), ("引流款", "traffic_driver"),
                                             ("利润款", "profit"), ("补充款", "long_tail")])
def test_chinese_tier_names_map_to_the_tiers(alias, tier):
    assert accept(view(product={"product_id": "p-1", "tier": alias})).product.tier == tier


@pytest.mark.parametrize("tier", ["flagship", "traffic_driver", "profit", "long_tail"])
def test_english_tier_names_are_accepted(tier):
    assert accept(view(product={"product_id": "p-1", "tier": tier})).product.tier == tier


def test_unknown_tier_is_rejected():
    assert reason_for(view(product={"product_id": "p-1", "tier": "爆款"})) == (
        "product.tier: Input should be 'flagship', 'traffic_driver', 'profit' or 'long_tail'"
    )


@pytest.mark.parametrize(("raw", "path"), [
    (view(colour="red"), "colour"),
    (view(product={"product_id": "p-1", "colour": "red"}), "product.colour"),
    (view(channel={"source": "x", "gclid": "g"}), "channel.gclid"),
    (completed_order(items=[{"product_id": "p-1", "quantity": 1, "unit_price": 1, "sku": "s"}]),
     "order.items[0].sku"),
])
def test_unknown_fields_are_rejected_with_the_properties_hint(raw, path):
    assert reason_for(raw) == f"{path}: {UNKNOWN_FIELD}"


def test_several_problems_are_reported_together():
    reason = reason_for(view(colour="red", quantity=0))
    assert reason.split("; ") == ["quantity: Input should be greater than or equal to 1", f"colour: {UNKNOWN_FIELD}"]


def test_properties_are_kept_as_is_including_nulls():
    properties = {"备注": "送礼", "tags": ["a", None, {"deep": None}], "score": 1.5, "flag": False}
    event = accept(view(properties=properties))
    assert event.properties == properties
    assert Event.from_json(event.to_json()).properties == properties


@pytest.mark.parametrize("raw", [[view()], "view", None, 3])
def test_an_event_that_is_not_an_object_is_rejected(raw):
    assert reason_for(raw) == "an event must be a JSON object"


@pytest.mark.parametrize("event_type", ["identify", "page", "VIEW", None])
def test_native_events_must_have_one_of_the_five_types(event_type):
    assert reason_for(view(type=event_type)) == "type: type must be one of view, add_to_cart, inquiry, order, review"


def test_identify_is_accepted_only_from_the_segment_path():
    raw = {"type": "identify", "user_id": "u-1", "occurred_at": "2026-05-01T10:00:00Z", "traits": {"vip": True}}
    assert accept(raw, native=False).traits == {"vip": True}
    assert "type must be one of" in reason_for(raw)


def test_identify_without_traits_is_rejected():
    raw = {"type": "identify", "user_id": "u-1", "occurred_at": "2026-05-01T10:00:00Z"}
    assert reason_for(raw, native=False) == "an identify call needs traits"


# --- Unicode and the published form ---------------------------------------------------------------


def test_chinese_and_emoji_round_trip_byte_exact_through_json():
    name = "蓝牙耳机 Pro 🎧 — 限量"
    event = accept(view(product={"product_id": "商品-1", "name": name, "category": "数码/耳机"},
                        properties={"表情": "好评😀👍🏽"}))
    published = event.to_json()
    assert name.encode("utf-8") in published
    assert "好评😀👍🏽".encode() in published
    parsed = PublishedEvent.from_json(published)
    assert parsed == PublishedEvent.model_validate(event.model_dump())
    assert parsed.product.name == name
    assert parsed.to_json() == published


def test_published_json_leaves_out_nulls_but_keeps_the_person_key():
    published = orjson.loads(accept(view()).to_json())
    assert published["person_key"] == "u-1"
    assert "anonymous_id" not in published
    assert "session_id" not in published


def test_from_json_does_not_reapply_ingest_time_checks():
    # Consumers re-read events long after ingest; the future and currency checks belong at the door.
    published = accept(completed_order(currency="CNY")).to_json()
    assert Event.from_json(published).order.currency == "CNY"
    late = orjson.loads(published) | {"occurred_at": "2099-01-01T00:00:00Z"}
    assert Event.from_json(orjson.dumps(late)).occurred_at.year == 2099


# --- event ids ------------------------------------------------------------------------------------


def test_a_given_event_id_is_kept():
    assert accept(view(event_id="evt-42")).event_id == "evt-42"


def test_a_missing_event_id_is_derived_as_a_uuid():
    assert uuid.UUID(accept(view()).event_id)


def test_derived_event_id_is_stable_for_the_same_content_and_index():
    later = ValidationContext(received_at=RECEIVED_AT + timedelta(seconds=30), currency="CNY")
    first = accept(view(), index=3).event_id
    assert accept(view(), index=3).event_id == first
    assert accept(view(), index=3, context=later).event_id == first  # a retry after a 503
    reordered = dict(reversed(list(view().items())))
    assert accept(reordered, index=3).event_id == first


def test_derived_event_id_differs_across_index():
    assert accept(view(), index=0).event_id != accept(view(), index=1).event_id


def test_derived_event_id_differs_across_content():
    assert accept(view(), index=0).event_id != accept(view(user_id="u-2"), index=0).event_id
    assert accept(view(), index=0).event_id != accept(with_price("1.00"), index=0).event_id


def test_a_null_event_id_is_derived_too():
    assert uuid.UUID(accept(view(event_id=None)).event_id)


def test_an_empty_event_id_is_rejected():
    assert reason_for(view(event_id="")) == "event_id: String should have at least 1 character"


# --- epoch microseconds ---------------------------------------------------------------------------


def test_epoch_micros_counts_exact_microseconds_since_1970():
    assert epoch_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_micros(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1
    assert epoch_micros(datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == -1
    assert epoch_micros(datetime(2026, 5, 1, 2, 0, tzinfo=UTC)) == 1_777_600_800_000_000


def test_epoch_micros_is_independent_of_the_offset():
    shanghai = timezone(timedelta(hours=8))
    assert epoch_micros(datetime(2026, 5, 1, 10, 0, tzinfo=shanghai)) == epoch_micros(
        datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
    )


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_epoch_micros_round_trips_exactly(moment):
    assert from_epoch_micros(epoch_micros(moment)) == moment
    assert from_epoch_micros(epoch_micros(moment)).tzinfo == UTC


def test_from_epoch_micros_keeps_microseconds_that_a_float_would_lose():
    micros = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
    assert from_epoch_micros(micros) == datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert epoch_micros(from_epoch_micros(micros)) == micros


def test_numeric_user_id_is_blamed_on_user_id_alone():
    with pytest.raises(EventRejected) as rejected:
        validate_event({"type": "view", "user_id": 123, "occurred_at": "2026-05-01T10:00:00Z",
                        "product": {"product_id": "p"}}, index=0,
                       context=ValidationContext(received_at=datetime(2026, 5, 1, 12, tzinfo=UTC), currency="CNY"))
    assert rejected.value.reason == "user_id: Input should be a valid string"


def test_negative_zero_money_is_published_as_zero():
    event = validate_event({"type": "view", "user_id": "u", "occurred_at": "2026-05-01T10:00:00Z",
                            "product": {"product_id": "p", "price": "-0.00"}}, index=0,
                           context=ValidationContext(received_at=datetime(2026, 5, 1, 12, tzinfo=UTC), currency="CNY"))
    assert b'"price":"0.00"' in event.to_json()
