import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from services.funnel.domain.kpis import daily_kpis, range_kpis

from .builders import at, cart, inquiry, order, refund, review, view

DAY = (at(), at(days=1))


def test_traffic_cart_and_order_counts_over_a_range():
    events = [
        view("ann", at(hours=1)),
        view("ann", at(hours=2)),
        view("bob", at(hours=3)),
        view("cid", at(hours=4)),
        cart("ann", at(hours=5)),
        cart("ann", at(hours=6)),
        order("ann", at(hours=7), "o1", "30"),
        order("ann", at(hours=8), "o2", "50"),
        order("bob", at(hours=9), "o3", "20"),
    ]

    kpis = range_kpis(events, *DAY, as_of=at(days=2))

    assert (kpis.pv, kpis.uv, kpis.cart_users, kpis.buyers, kpis.orders) == (4, 3, 1, 2, 3)
    assert kpis.gmv == Decimal("100")
    assert kpis.conversion_rate == 2 / 3
    assert kpis.aov == Decimal("100") / 3
    assert kpis.revenue_per_buyer == Decimal("50")
    assert kpis.uv_value == Decimal("100") / 3
    assert kpis.repurchase_rate == 1 / 2


def test_the_range_includes_from_and_excludes_to():
    events = [view("ann", at()), view("bob", at(days=1)), view("cid", at(days=1, microseconds=-1))]

    assert range_kpis(events, *DAY, as_of=at(days=2)).uv == 2


def test_zero_denominators_give_none_and_an_empty_range_gives_zeros():
    kpis = range_kpis([], *DAY, as_of=at(days=2))

    assert (kpis.pv, kpis.uv, kpis.orders, kpis.gmv, kpis.net_gmv) == (0, 0, 0, Decimal(0), Decimal(0))
    for ratio in (
        kpis.conversion_rate,
        kpis.aov,
        kpis.revenue_per_buyer,
        kpis.uv_value,
        kpis.repurchase_rate,
        kpis.inquiry_rate,
        kpis.inquiry_conversion,
        kpis.median_response_seconds,
        kpis.return_rate,
        kpis.avg_rating,
        kpis.negative_share,
    ):
        assert ratio is None


def test_buyers_without_views_leave_conversion_undefined_rather_than_infinite():
    kpis = range_kpis([order("ann", at(hours=1), "o1", "10")], *DAY, as_of=at(days=2))

    assert kpis.buyers == 1
    assert kpis.conversion_rate is None
    assert kpis.aov == Decimal("10")


def test_duplicate_completed_events_count_the_order_once():
    events = [order("ann", at(hours=1), "o1", "10"), order("ann", at(hours=2), "o1", "99")]

    kpis = range_kpis(events, *DAY, as_of=at(days=2))

    assert (kpis.orders, kpis.gmv, kpis.repurchase_rate) == (1, Decimal("10"), 0.0)


def test_an_order_counts_in_the_range_of_its_earliest_completed_event():
    events = [order("ann", at(hours=23), "o1", "10"), order("ann", at(days=1, hours=1), "o1", "10")]

    assert range_kpis(events, at(days=1), at(days=2), as_of=at(days=3)).orders == 0


def test_refunds_count_by_refund_date_and_a_later_refund_reaches_return_rate_not_refunds():
    events = [
        order("ann", at(hours=1), "o1", "80"),
        order("bob", at(hours=2), "o2", "20"),
        refund("ann", at(days=1, hours=3), "o1", "30"),
    ]

    ordering_day = range_kpis(events, *DAY, as_of=at(days=5))
    refund_day = range_kpis(events, at(days=1), at(days=2), as_of=at(days=5))

    assert (ordering_day.refunds, ordering_day.net_gmv, ordering_day.return_rate) == (
        Decimal(0),
        Decimal("100"),
        1 / 2,
    )
    assert (refund_day.gmv, refund_day.refunds, refund_day.net_gmv, refund_day.return_rate) == (
        Decimal(0),
        Decimal("30"),
        Decimal("-30"),
        None,
    )


def test_return_rate_only_sees_refunds_known_at_as_of():
    events = [order("ann", at(hours=1), "o1", "80"), refund("ann", at(days=3), "o1")]

    assert range_kpis(events, *DAY, as_of=at(days=3, microseconds=-1)).return_rate == 0.0
    assert range_kpis(events, *DAY, as_of=at(days=3)).return_rate == 1.0


def test_a_refund_of_an_unknown_order_changes_nothing():
    events = [order("ann", at(hours=1), "o1", "80"), refund("bob", at(hours=2), "ghost", "12")]

    kpis = range_kpis(events, *DAY, as_of=at(days=2))

    assert (kpis.refunds, kpis.net_gmv, kpis.return_rate) == (Decimal(0), Decimal("80"), 0.0)


def test_inquiry_conversion_counts_an_order_up_to_seven_days_later_inclusive():
    inquired = at(hours=10)
    events = [
        inquiry("ann", inquired),
        order("ann", inquired + timedelta(days=7), "o1"),
        inquiry("bob", inquired),
        order("bob", inquired + timedelta(days=7, microseconds=1), "o2"),
        inquiry("cid", inquired),
        order("cid", inquired, "o3"),
        inquiry("dee", inquired),
        order("dee", inquired - timedelta(microseconds=1), "o4"),
    ]

    kpis = range_kpis(events, *DAY, as_of=at(days=30))

    assert kpis.inquiry_users == 4
    assert kpis.inquiry_conversion == 2 / 4


def test_inquiry_conversion_waits_for_orders_known_at_as_of():
    events = [inquiry("ann", at(hours=10)), order("ann", at(days=3), "o1")]

    assert range_kpis(events, *DAY, as_of=at(days=2)).inquiry_conversion == 0.0
    assert range_kpis(events, *DAY, as_of=at(days=3)).inquiry_conversion == 1.0


def test_inquiry_rate_and_median_response_over_inquiries_that_carry_one():
    events = [
        view("ann", at(hours=1)),
        view("bob", at(hours=1)),
        inquiry("ann", at(hours=2), response_seconds=30),
        inquiry("ann", at(hours=3), response_seconds=10),
        inquiry("bob", at(hours=4)),
        inquiry("cid", at(hours=5), response_seconds=60),
        inquiry("cid", at(hours=6), response_seconds=20),
    ]

    kpis = range_kpis(events, *DAY, as_of=at(days=2))

    assert kpis.inquiry_users == 3
    assert kpis.inquiry_rate == 3 / 2
    assert kpis.median_response_seconds == 25


def test_reviews_give_count_average_and_negative_share_at_rating_two_or_less():
    events = [review("ann", at(hours=h), rating) for h, rating in enumerate([1, 2, 3, 5])]

    kpis = range_kpis(events, *DAY, as_of=at(days=2))

    assert (kpis.review_count, kpis.avg_rating, kpis.negative_share) == (4, 2.75, 0.5)


def test_days_follow_the_reporting_time_zone():
    shanghai = ZoneInfo("Asia/Shanghai")
    events = [
        view("ann", datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=shanghai)),
        view("bob", datetime(2026, 3, 2, 0, 0, tzinfo=shanghai)),  # 2026-03-01 16:00 UTC
        view("cid", datetime(2026, 3, 2, 15, 59, tzinfo=shanghai)),
    ]
    start = datetime(2026, 3, 1, tzinfo=shanghai)
    end = datetime(2026, 3, 3, tzinfo=shanghai)

    days = daily_kpis(events, start, end, as_of=at(days=5), time_zone="Asia/Shanghai")

    assert list(days) == [date(2026, 3, 1), date(2026, 3, 2)]
    assert [kpis.uv for kpis in days.values()] == [1, 2]
    assert range_kpis(events, start, end, as_of=at(days=5)).uv == 3


def test_a_day_is_twenty_three_hours_when_the_clocks_spring_forward():
    new_york = ZoneInfo("America/New_York")
    events = [view("ann", datetime(2026, 3, 8, 23, 30, tzinfo=new_york))]

    days = daily_kpis(
        events,
        datetime(2026, 3, 8, tzinfo=new_york),
        datetime(2026, 3, 10, tzinfo=new_york),
        as_of=at(days=30),
        time_zone="America/New_York",
    )

    assert [kpis.pv for kpis in days.values()] == [1, 0]


def test_a_range_starting_inside_a_day_keeps_only_its_own_part_of_that_day():
    events = [view("ann", at(hours=1)), view("bob", at(hours=13)), view("cid", at(days=1, hours=1))]

    days = daily_kpis(events, at(hours=12), at(days=1, hours=12), as_of=at(days=3), time_zone="UTC")

    assert {day: kpis.uv for day, kpis in days.items()} == {date(2026, 3, 1): 1, date(2026, 3, 2): 1}


def test_an_empty_range_has_no_days():
    assert daily_kpis([view("ann", at())], at(), at(), as_of=at(days=1), time_zone="UTC") == {}


def test_each_day_is_computed_over_that_day_alone():
    events = [order("ann", at(hours=1), "o1", "10"), order("ann", at(days=1, hours=1), "o2", "10")]

    days = daily_kpis(events, at(), at(days=2), as_of=at(days=3), time_zone="UTC")

    assert [kpis.repurchase_rate for kpis in days.values()] == [0.0, 0.0]
    assert range_kpis(events, at(), at(days=2), as_of=at(days=3)).repurchase_rate == 1.0


def test_input_order_does_not_change_the_kpis():
    events = [
        view("ann", at(hours=1)),
        cart("ann", at(hours=2)),
        inquiry("ann", at(hours=2), response_seconds=5),
        order("ann", at(hours=3), "o1", "10"),
        order("ann", at(hours=4), "o1", "12"),
        refund("ann", at(hours=5), "o1"),
        review("ann", at(hours=6), 4),
        view("bob", at(hours=6)),
    ]
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)

    assert range_kpis(shuffled, *DAY, as_of=at(days=2)) == range_kpis(events, *DAY, as_of=at(days=2))
