from datetime import timedelta
from decimal import Decimal
from itertools import chain

import pytest

from services.funnel.domain.products import product_lifecycles, product_matrix, product_metrics

from .builders import at, cart, inquiry, item, order, refund, review, view

AS_OF = at(days=100)
RECENTLY = AS_OF - timedelta(days=1)
FOUR_WEEKS = timedelta(days=28)


def test_product_metrics_over_a_range():
    events = [
        view("ann", at(hours=1), "p1", name="帆布包", category="bags"),
        view("ann", at(hours=2), "p1"),
        view("bob", at(hours=2), "p1"),
        cart("ann", at(hours=3), "p1"),
        inquiry("bob", at(hours=3), "p1"),
        inquiry("bob", at(hours=3)),
        order("ann", at(hours=4), "o1", "45", (item("p1", 2, "15"), item("p2", 1, "15"))),
        order("cid", at(hours=5), "o2", "15", (item("p1", 1, "15"),)),
        refund("cid", at(days=5), "o2", "15"),
        review("ann", at(hours=6), 5, "p1"),
        review("bob", at(hours=6), 2, "p1"),
    ]

    metrics = {m.product_id: m for m in product_metrics(events, at(), at(days=1), AS_OF)}

    p1 = metrics["p1"]
    assert (p1.name, p1.category) == ("帆布包", "bags")
    assert (p1.views, p1.uv, p1.cart_users, p1.buyers, p1.units, p1.gmv) == (3, 2, 1, 2, 3, Decimal("45"))
    assert (p1.conversion_rate, p1.uv_value) == (1.0, Decimal("22.5"))
    assert (p1.review_count, p1.avg_rating, p1.negative_share) == (2, 3.5, 0.5)
    assert (p1.return_rate, p1.inquiry_count) == (0.5, 1)
    p2 = metrics["p2"]
    assert (p2.views, p2.uv, p2.buyers, p2.units, p2.gmv) == (0, 0, 1, 1, Decimal("15"))
    assert (p2.conversion_rate, p2.uv_value, p2.avg_rating, p2.negative_share, p2.return_rate) == (
        None,
        None,
        None,
        None,
        0.0,
    )


def test_product_metrics_leave_out_activity_outside_the_range():
    events = [view("ann", at(days=-1), "p1"), order("ann", at(days=1), "o1", "10", (item("p9"),))]

    assert product_metrics(events, at(), at(days=1), AS_OF) == []


def _product(product_id, *, price=None, category="bags", uv=1, units=0, unit_price="10", tier=None):
    """A product seen recently by `uv` people and bought `units` times in one order."""
    events = [
        view(f"{product_id}-viewer{n}", RECENTLY, product_id, category=category, price=price, tier=tier)
        for n in range(uv)
    ]
    if units:
        lines = (item(product_id, units, unit_price),)
        events.append(order(f"{product_id}-buyer", RECENTLY, f"{product_id}-order", None, lines))
    return events


def _tiers(*products):
    return {entry.product_id: entry.suggested_tier for entry in product_matrix(chain(*products), AS_OF)}


def _ten_bags(**top):
    """Ten bags priced 10..100 with one viewer each; `top` overrides the 100-priced bag p9."""
    return [_product(f"p{n}", price=str(10 * (n + 1))) for n in range(9)] + [
        _product("p9", price="100", **top)
    ]


def test_the_most_expensive_tenth_of_a_category_selling_no_more_than_its_median_is_flagship():
    assert _tiers(*_ten_bags())["p9"] == "flagship"


def test_a_price_share_below_of_exactly_point_nine_with_units_at_the_median_is_flagship():
    # Units over the ten bags: 0 x4, 1 x6 -> median 1, and p9 sells exactly 1.
    bags = [_product(f"p{n}", price=str(10 * (n + 1)), units=int(n >= 4)) for n in range(9)]
    assert _tiers(*bags, _product("p9", price="100", units=1))["p9"] == "flagship"


def test_a_top_priced_product_selling_above_the_category_median_is_not_flagship():
    assert _tiers(*_ten_bags(units=1))["p9"] != "flagship"


def test_a_price_share_below_of_point_eight_is_not_flagship():
    assert _tiers(*_ten_bags())["p8"] != "flagship"


def test_products_tied_at_the_top_price_share_the_same_share_below():
    bags = [_product(f"p{n}", price=str(10 * (n + 1))) for n in range(8)]
    tiers = _tiers(*bags, _product("p8", price="100"), _product("p9", price="100"))

    assert tiers["p8"] != "flagship"
    assert tiers["p9"] != "flagship"


def test_price_is_compared_within_the_category_only():
    hats = [_product(f"hat{n}", price=str(n + 1), category="hats") for n in range(10)]

    assert _tiers(*_ten_bags(), *hats)["hat9"] == "flagship"


def test_a_top_fifth_traffic_product_priced_at_or_below_the_category_median_is_traffic_driver():
    # Ten bags by uv 10..1; the median bag price is 55.
    bags = [_product(f"p{n}", price=str(10 * (n + 1)), uv=10 - n) for n in range(10)]
    tiers = _tiers(*bags)

    assert tiers["p0"] == "traffic_driver"
    assert tiers["p1"] == "traffic_driver"
    assert tiers["p2"] != "traffic_driver"


def test_a_price_equal_to_the_category_median_passes_the_traffic_driver_rule():
    bags = [_product("a", price="10"), _product("b", price="30", uv=5), _product("c", price="50")]

    assert _tiers(*bags, *[_product(f"x{n}", category="other") for n in range(7)])["b"] == "traffic_driver"


@pytest.mark.parametrize(("more_popular", "tier"), [(1, "traffic_driver"), (2, "long_tail")])
def test_a_uv_share_above_of_exactly_point_two_is_not_traffic_driver(more_popular, tier):
    popular = [_product(f"big{n}", price="99", uv=9) for n in range(more_popular)]
    others = [_product(f"q{n}", price="50") for n in range(9 - more_popular)]

    assert _tiers(*popular, _product("cheap", price="1", uv=5), *others)["cheap"] == tier


def test_uv_is_compared_across_all_products():
    bags = [_product(f"p{n}", price="1", uv=5 if n < 2 else 1) for n in range(9)]

    assert _tiers(_product("hat", price="10", category="hats", uv=3), *bags)["hat"] == "long_tail"


def test_a_top_fifth_gmv_product_is_profit():
    tiers = _tiers(*[_product(f"p{n}", units=n) for n in range(10)])

    assert [tiers[f"p{n}"] for n in (9, 8, 7)] == ["profit", "profit", "long_tail"]


def test_a_product_without_gmv_is_never_profit():
    tiers = _tiers(*[_product(f"p{n}") for n in range(10)])

    assert set(tiers.values()) == {"long_tail"}


def test_a_product_without_price_fails_the_flagship_and_traffic_rules_but_can_be_profit():
    tiers = _tiers(_product("unpriced", uv=9, units=5), *[_product(f"p{n}", price="10") for n in range(9)])

    assert tiers["unpriced"] == "profit"


def test_the_matrix_covers_products_viewed_in_the_last_thirty_days_with_their_declared_tier():
    events = [
        view("ann", AS_OF - timedelta(days=30), "gone"),
        view("ann", AS_OF - timedelta(days=30) + timedelta(microseconds=1), "kept", price="5", tier="profit"),
        order("ann", AS_OF - timedelta(days=31), "o1", "5", (item("kept", 1, "5"),)),
        view("ann", AS_OF + timedelta(seconds=1), "future"),
    ]

    (entry,) = product_matrix(events, AS_OF)

    assert (entry.product_id, entry.uv, entry.units, entry.gmv, entry.price) == (
        "kept",
        1,
        0,
        Decimal(0),
        Decimal(5),
    )
    assert (entry.suggested_tier, entry.declared_tier) == ("traffic_driver", "profit")
    assert entry.lifecycle == "decline"


@pytest.mark.parametrize(
    ("previous", "last", "stage"),
    [
        (0, 0, "inactive"),
        (5, 7, "growth"),
        (5, 6, "maturity"),  # exactly 1.2 P
        (5, 4, "maturity"),  # exactly 0.8 P
        (5, 3, "decline"),
        (0, 1, "growth"),
        (1, 0, "decline"),
        (5, 5, "maturity"),
    ],
)
def test_lifecycle_compares_units_of_the_last_four_weeks_with_the_four_before(previous, last, stage):
    events = [view("ann", AS_OF - timedelta(days=90), "p1")]
    if previous:
        events.append(order("ann", AS_OF - FOUR_WEEKS, "before", None, (item("p1", previous),)))
    if last:
        events.append(
            order("ann", AS_OF - FOUR_WEEKS + timedelta(microseconds=1), "last", None, (item("p1", last),))
        )

    assert product_lifecycles(events, AS_OF) == {"p1": stage}


def test_a_product_first_seen_within_the_last_four_weeks_is_in_introduction():
    events = [
        view("ann", AS_OF - FOUR_WEEKS + timedelta(microseconds=1), "new"),
        view("ann", AS_OF - FOUR_WEEKS, "old"),
        order("ann", AS_OF - timedelta(days=1), "o1", None, (item("bought-only", 3),)),
    ]

    assert product_lifecycles(events, AS_OF) == {
        "bought-only": "introduction",
        "new": "introduction",
        "old": "inactive",
    }


def test_lifecycle_ignores_orders_older_than_eight_weeks_and_events_after_as_of():
    events = [
        order("ann", AS_OF - 2 * FOUR_WEEKS, "old", None, (item("p1", 9),)),
        order("ann", AS_OF + timedelta(seconds=1), "future", None, (item("p1", 9),)),
    ]

    assert product_lifecycles(events, AS_OF) == {"p1": "inactive"}
