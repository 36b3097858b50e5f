"""`make demo`'s storefront: reproducible, every event one ingest accepts, the shop the issue describes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

from deploy.demo import CATALOGUE, CHANNELS, Storefront, promotion_lift
from libs.common.events import ValidationContext, validate_event

END = date(2026, 5, 1)  # in the past: nothing is cut at the present


def _events(seed: int = 3) -> list[dict]:
    return list(Storefront(seed=seed, days=14, customers=40, end=END).events())


def test_the_same_seed_and_end_day_give_the_same_events_with_the_same_ids():
    assert _events() == _events()
    assert _events(seed=4) != _events()


def test_every_event_passes_ingest_validation_and_ids_are_unique():
    events = _events()
    context = ValidationContext(received_at=datetime.now(UTC), currency="CNY")

    for index, raw in enumerate(events):
        validate_event(raw, index=index, context=context)
    assert len({event["event_id"] for event in events}) == len(events)


def test_the_shop_has_every_event_kind_refunds_with_reasons_coupons_and_answered_inquiries():
    events = _events()
    kinds = Counter(event["type"] for event in events)
    orders = [event["order"] for event in events if event["type"] == "order"]

    assert set(kinds) == {"view", "add_to_cart", "inquiry", "order", "review"}
    assert any(order["status"] == "refunded" and order["refund_reason"] for order in orders)
    assert any(order.get("coupon_code") for order in orders)
    assert all(event["inquiry"]["response_seconds"] >= 0 for event in events if event["type"] == "inquiry")
    assert {event["channel"]["source"] for event in events if "channel" in event} >= {
        "paid_social", "search", "content", "private_community"}


def test_the_catalogue_has_the_four_roles_under_chinese_and_english_names():
    assert {product.tier for product in CATALOGUE} == {"形象款", "引流款", "利润款", "补充款"}
    assert all(any("\u4e00" <= char <= "\u9fff" for char in product.name) for product in CATALOGUE)
    assert all(any(char.isascii() and char.isalpha() for char in product.name) for product in CATALOGUE)
    assert len(CHANNELS) == 5


def test_the_promotion_warms_up_bursts_and_glows_after():
    days = 30
    lifts = [promotion_lift(day, days) for day in range(days)]
    burst = max(range(days), key=lambda day: lifts[day][1])

    assert lifts[burst - 2][1] < 1.0  # warm-up: buying held back
    assert lifts[burst + 3][1] > 1.0  # afterglow
    assert lifts[0] == (1.0, 1.0)


def test_spend_is_posted_per_paid_channel_and_day():
    storefront = Storefront(seed=3, days=14, customers=40, end=END)
    spend = list(storefront.spend())

    assert {entry["source"] for entry in spend} == {"paid_social", "search", "content"}
    assert len(spend) == 14 * 3
