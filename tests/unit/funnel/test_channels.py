from datetime import timedelta
from decimal import Decimal

from services.funnel.domain.channels import channel_metrics, order_channels

from .builders import at, cart, order, refund, view

LATER = at(days=60)
MONTH = timedelta(days=30)


def test_an_order_with_its_own_source_keeps_it():
    events = [
        view("ann", at(days=1, hours=1), source="ads"),
        order("ann", at(days=1, hours=2), "o1", source="mail"),
    ]

    assert order_channels(events, LATER) == {"o1": "mail"}


def test_a_direct_order_takes_the_persons_latest_sourced_event_before_it():
    events = [
        view("ann", at(days=1, hours=1), source="ads"),
        cart("ann", at(days=1, hours=2), source="search"),
        view("ann", at(days=1, hours=3)),
        order("ann", at(days=1, hours=4), "o1"),
        view("bob", at(days=1, hours=3), source="mail"),
    ]

    assert order_channels(events, LATER) == {"o1": "search"}


def test_the_lookback_includes_exactly_thirty_days_before_and_excludes_the_orders_own_instant():
    ordered = at(days=40)
    events = [
        view("ann", ordered - MONTH, source="ads"),
        order("ann", ordered, "o1"),
        view("bob", ordered - MONTH - timedelta(microseconds=1), source="ads"),
        view("bob", ordered, source="mail"),
        order("bob", ordered, "o2"),
    ]

    assert order_channels(events, LATER) == {"o1": "ads", "o2": "(direct)"}


def test_simultaneous_sourced_events_resolve_to_the_larger_event_id():
    events = [
        view("ann", at(days=1), source="ads", event_id="b"),
        view("ann", at(days=1), source="mail", event_id="a"),
        order("ann", at(days=2), "o1"),
    ]

    assert order_channels(events, LATER) == {"o1": "ads"}


def test_channel_metrics_count_views_by_view_source_and_orders_by_order_channel():
    events = [
        view("ann", at(days=1), source="ads"),
        view("ann", at(days=1, hours=1), source="ads"),
        view("bob", at(days=1), source="ads"),
        view("cid", at(days=1)),
        order("ann", at(days=2), "o1", "30"),
        order("ann", at(days=3), "o2", "20", source="mail"),
        order("cid", at(days=2), "o3", "10"),
        order("ann", at(days=-1), "o0", "99"),
    ]

    metrics = {m.source: m for m in channel_metrics(events, at(), at(days=7), LATER)}

    assert list(metrics) == ["(direct)", "ads", "mail"]
    ads, direct, mail = metrics["ads"], metrics["(direct)"], metrics["mail"]
    assert (ads.uv, ads.buyers, ads.orders, ads.gmv) == (2, 1, 1, Decimal("30"))
    assert (ads.conversion_rate, ads.uv_value) == (0.5, Decimal("15"))
    assert (direct.uv, direct.buyers, direct.orders, direct.gmv, direct.conversion_rate) == (
        1,
        1,
        1,
        Decimal(10),
        1.0,
    )
    assert (mail.uv, mail.orders, mail.conversion_rate, mail.uv_value) == (0, 1, None, None)


def test_new_customers_are_counted_where_their_first_ever_order_came_from():
    events = [
        order("ann", at(days=-5), "o0", source="ads"),
        order("ann", at(days=2), "o1", source="ads"),
        order("bob", at(days=2), "o2", source="ads"),
        order("cid", at(days=3), "o3", source="mail"),
        order("cid", at(days=3), "o3", source="ads"),
        order("dee", at(days=8), "o4", source="ads"),
    ]

    metrics = {m.source: m.new_customers for m in channel_metrics(events, at(), at(days=7), LATER)}

    assert metrics == {"ads": 1, "mail": 1}


def test_roas_and_cac_come_from_the_spend_given_per_source():
    events = [
        order("ann", at(days=1), "o1", "300", source="ads"),
        order("bob", at(days=1), "o2", "100", source="ads"),
    ]
    spend = {"ads": Decimal("200"), "mail": Decimal("50"), "search": Decimal("0")}

    metrics = {m.source: m for m in channel_metrics(events, at(), at(days=7), LATER, spend)}

    assert (metrics["ads"].spend, metrics["ads"].roas, metrics["ads"].cac) == (
        Decimal(200),
        Decimal(2),
        Decimal(100),
    )
    assert (metrics["mail"].roas, metrics["mail"].cac) == (Decimal(0), None)
    assert (metrics["search"].roas, metrics["search"].cac) == (None, None)


def test_without_spend_there_is_no_roas_or_cac():
    metrics = channel_metrics([order("ann", at(days=1), "o1", source="ads")], at(), at(days=7), LATER)

    assert [(m.spend, m.roas, m.cac) for m in metrics] == [(None, None, None)]


def test_refunded_and_duplicate_order_events_do_not_add_orders():
    events = [
        order("ann", at(days=1), "o1", "30", source="ads"),
        order("ann", at(days=2), "o1", "30", source="mail"),
        refund("ann", at(days=3), "o1"),
        refund("ann", at(days=3), "ghost"),
    ]

    assert [(m.source, m.orders, m.gmv) for m in channel_metrics(events, at(), at(days=7), LATER)] == [
        ("ads", 1, Decimal("30"))
    ]
