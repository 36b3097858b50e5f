"""The funnel service's small pure pieces: event -> facts, money in answers, erasure messages."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from libs.common.db import cents
from libs.common.events import Event
from libs.common.privacy import ErasureRequest
from services.funnel.handlers import fact_of
from services.funnel.schemas import money


def test_an_order_event_keeps_every_fact_the_definitions_use():
    event = Event.model_validate({
        "event_id": "e-1", "type": "order", "anonymous_id": "a-9", "occurred_at": "2026-05-01T10:00:00+08:00",
        "channel": {"source": "douyin", "medium": "cpc"},
        "order": {"order_id": "o-1", "status": "completed", "total": "199.90", "discount": 10, "coupon_code": "C1",
                  "items": [{"product_id": "p-1", "category": "裙装", "quantity": 2, "unit_price": 104.95}]},
    })
    fact = fact_of(event)
    assert (fact.event_id, fact.type, fact.person_key, fact.source) == ("e-1", "order", "anon:a-9", "douyin")
    assert fact.occurred_at == datetime(2026, 5, 1, 2, tzinfo=UTC)
    assert fact.order.total == Decimal("199.90") and fact.order.discount == Decimal(10)
    assert fact.order.items[0].category == "裙装" and fact.order.items[0].amount == Decimal("209.90")
    assert fact.product_ids == ("p-1",)


def test_view_inquiry_and_review_facts_and_no_channel_is_direct():
    view = fact_of(Event.model_validate({
        "event_id": "v", "type": "view", "user_id": "u", "occurred_at": "2026-05-01T00:00:00Z",
        "product": {"product_id": "p", "name": "真丝", "category": "c", "price": 9.9, "tier": "引流款"}}))
    assert (view.source, view.product_name, view.price, view.declared_tier) == (
        "(direct)", "真丝", Decimal("9.9"), "traffic_driver")
    inquiry = fact_of(Event.model_validate({
        "event_id": "i", "type": "inquiry", "user_id": "u", "occurred_at": "2026-05-01T00:00:00Z",
        "inquiry": {"inquiry_id": "q", "response_seconds": 12.5}}))
    assert (inquiry.inquiry_id, inquiry.response_seconds, inquiry.product_id) == ("q", 12.5, None)
    review = fact_of(Event.model_validate({
        "event_id": "r", "type": "review", "user_id": "u", "occurred_at": "2026-05-01T00:00:00Z",
        "product": {"product_id": "p"}, "review": {"rating": 2, "text": "太小了"}}))
    assert review.rating == 2


def test_identify_calls_carry_no_behaviour_and_are_not_kept():
    identify = Event.model_validate({"event_id": "id", "type": "identify", "user_id": "u",
                                     "occurred_at": "2026-05-01T00:00:00Z", "traits": {"email": "x@example.com"}})
    assert fact_of(identify) is None


@pytest.mark.parametrize(("amount", "rounded"), [
    (Decimal("166.333333"), 166.33), (Decimal("0.005"), 0.01), (Decimal("2.675"), 2.68), (Decimal("-0.001"), 0.0),
    (Decimal("-20"), -20.0), (Decimal("99999999999999.99"), 99999999999999.99), (None, None),
])
def test_money_in_answers_is_rounded_half_up_to_cents(amount, rounded):
    assert money(amount) == rounded
    assert str(money(Decimal("-0.001"))) == "0.0"  # never "-0.0"


def test_money_is_stored_as_exact_cents():
    assert [cents(Decimal(v)) for v in ("0", "0.1", "12.34", "99999999999999.99")] == [0, 10, 1234, 9999999999999999]
    assert cents(None) is None


def test_an_erasure_request_gets_a_pseudonym_that_does_not_contain_the_person():
    request = ErasureRequest.from_json(
        b'{"request_id": "r-1", "person_key": "anon:a-9", "requested_at": "2026-05-01T00:00:00Z", "by": "ops"}')
    pseudonym = request.pseudonym
    assert pseudonym.startswith("erased:") and "a-9" not in pseudonym
    assert pseudonym == request.model_copy().pseudonym  # a replayed request erases to the same stand-in
    assert pseudonym != request.model_copy(update={"request_id": "r-2"}).pseudonym
