from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.funnel.domain.facts import FunnelEvent, History, OrderFacts

from .builders import at, cart, item, order, refund, view


def test_an_event_id_seen_twice_counts_once_and_the_first_arrival_stands():
    first = view("ann", at(hours=1), event_id="dup")
    resent = view("bob", at(hours=2), event_id="dup")

    history = History([first, resent], as_of=at(days=1))

    assert history.events.items == (first,)


def test_events_after_as_of_are_not_known_yet():
    known = view("ann", at(hours=1))
    later = view("ann", at(hours=1, microseconds=1))

    assert History([known, later], as_of=at(hours=1)).events.items == (known,)


def test_an_order_counts_once_at_its_earliest_completed_event():
    late = order("ann", at(hours=5), "o1", "30", event_id="e-late")
    early = order("ann", at(hours=2), "o1", "20", event_id="e-early")

    history = History([late, early], as_of=at(days=1))

    assert history.orders.items == (early,)
    assert not history.counts_as_order(late)


def test_simultaneous_completed_events_of_one_order_count_the_smaller_event_id():
    b = order("ann", at(hours=2), "o1", "30", event_id="b")
    a = order("ann", at(hours=2), "o1", "20", event_id="a")

    assert History([b, a], as_of=at(days=1)).orders.items == (a,)


def test_a_refund_without_amount_refunds_the_order_total_and_several_refunds_add_up():
    events = [
        order("ann", at(hours=1), "o1", "80"),
        refund("ann", at(hours=2), "o1", "15"),
        refund("ann", at(hours=3), "o1"),
    ]

    refunds = History(events, as_of=at(days=1)).refunds.items

    assert [r.amount for r in refunds] == [Decimal("15"), Decimal("80")]


def test_a_refund_of_an_unknown_order_is_ignored():
    history = History([refund("ann", at(hours=2), "ghost", "5")], as_of=at(days=1))

    assert history.refunds.items == ()
    assert history.refunded_order_ids == set()


def test_a_refund_counts_only_once_the_completed_event_is_known_at_as_of():
    events = [refund("ann", at(hours=2), "o1"), order("ann", at(hours=3), "o1", "40")]

    assert History(events, as_of=at(hours=2, minutes=30)).refunds.items == ()
    assert [r.amount for r in History(events, as_of=at(hours=3)).refunds.items] == [Decimal("40")]


def test_product_attributes_are_those_of_the_latest_event_carrying_each_of_them():
    events = [
        view("ann", at(hours=1), "p1", name="旧名", category="shoes", price="100", tier="flagship"),
        view("ann", at(hours=2), "p1", name="新名"),
        cart("bob", at(hours=3), "p1", category="boots"),
        view("bob", at(hours=4), "p1", price="90"),
    ]

    attributes = History(events, as_of=at(days=1)).products["p1"]

    assert (attributes.name, attributes.category, attributes.price, attributes.declared_tier) == (
        "新名",
        "boots",
        Decimal("90"),
        "flagship",
    )


def test_simultaneous_attribute_carriers_resolve_to_the_larger_event_id():
    events = [
        view("ann", at(hours=1), "p1", price="7", event_id="b"),
        view("ann", at(hours=1), "p1", price="5", event_id="a"),
    ]

    assert History(events, as_of=at(days=1)).products["p1"].price == Decimal("7")


def test_an_order_item_carries_its_product_category():
    events = [
        view("ann", at(hours=1), "p1", category="shoes"),
        order("ann", at(hours=2), "o1", "10", (item("p1", category="boots"),)),
    ]

    assert History(events, as_of=at(days=1)).category_of("p1") == "boots"


def test_product_attributes_ignore_events_after_as_of():
    events = [view("ann", at(hours=1), "p1", price="5"), view("ann", at(hours=3), "p1", price="9")]

    assert History(events, as_of=at(hours=2)).products["p1"].price == Decimal("5")


def test_an_order_without_total_is_worth_its_lines():
    facts = order("ann", at(), "o1", None, (item("p1", 2, "3.50"), item("p2", 1, "1"))).order

    assert facts is not None
    assert facts.amount == Decimal("8.00")
    assert facts.amount_of("p1") == Decimal("7.00")


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        view("ann", datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        History([], as_of=datetime(2026, 3, 1))


def test_instants_are_held_in_utc_so_arithmetic_across_dst_is_elapsed_time():
    new_york = ZoneInfo("America/New_York")
    before_dst = view("ann", datetime(2026, 3, 8, 1, 30, tzinfo=new_york))

    assert before_dst.occurred_at == datetime(2026, 3, 8, 6, 30, tzinfo=UTC)
    assert before_dst.occurred_at + timedelta(hours=1) == datetime(2026, 3, 8, 3, 30, tzinfo=new_york)


def test_order_facts_go_only_with_order_events():
    facts = OrderFacts("o1", "completed", (), Decimal(1))
    with pytest.raises(ValueError, match="order facts"):
        FunnelEvent("e", "view", "ann", at(), order=facts)
    with pytest.raises(ValueError, match="order facts"):
        FunnelEvent("e", "order", "ann", at())
    with pytest.raises(ValueError, match="unknown event type"):
        FunnelEvent("e", "click", "ann", at())  # type: ignore[arg-type]
