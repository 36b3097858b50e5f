"""The DuckDB product engine (services.funnel.engine.products) gives exactly the reference domain's product
metrics (services.funnel.domain.products.product_metrics) on random histories, for every range, as_of and page
size; and at the definitions' boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.funnel.domain.products import product_metrics
from services.funnel.engine import products as engine
from tests.integration.funnel.helpers import facts, order, refund, review, view
from tests.integration.funnel.test_property import FIRST_ERA, ZONE, build, histories
from tests.unit.funnel.duck import applications, duck_of, erased


def span_of(raw: dict) -> tuple[datetime, datetime, datetime]:
    """The example's range (days of the reporting zone) and as_of."""
    first_day, days = raw["span_days"]
    base = FIRST_ERA.date()
    start, end = (datetime.combine(base + timedelta(days=d), datetime.min.time(), ZONE).astimezone(UTC)
                  for d in (first_day, first_day + days))
    return start, end, FIRST_ERA + timedelta(hours=raw["as_of_hours"])


def all_products(cursor, start, end, as_of):
    """Every product's metrics, by walking the pages."""
    return [metrics for page in walk(cursor, start, end, as_of, 10_000) for metrics in page]


def walk(cursor, start, end, as_of, limit):
    """Every page in turn, each after the last product of the one before."""
    pages, after = [], None
    while True:
        page, more = engine.product_page(cursor, start, end, as_of, after=after, limit=limit)
        pages.append(page)
        if not more:
            return pages
        assert page, "a page that says more follow is not empty"
        after = page[-1].product_id


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=histories, limit=st.integers(1, 5), applied=applications)
def test_equal_to_the_domain_on_random_histories_page_by_page(raw, limit, applied):
    # The copy applied in random batches with product_state folded at random points, a person erased or not.
    arrived = facts(build(raw, 0))
    known = erased(arrived, applied["erase"])
    start, end, as_of = span_of(raw)
    want = product_metrics(known, start, end, as_of)
    with duck_of(arrived, **applied) as duck:
        assert all_products(duck.cursor(), start, end, as_of) == want
        pages = walk(duck.cursor(), start, end, as_of, limit)
        # A range inside days, with as_of inside it: late events are not yet known.
        inner = (start + timedelta(hours=5), end + timedelta(hours=7), start + timedelta(days=1, hours=3))
        assert all_products(duck.cursor(), *inner) == product_metrics(known, *inner)
    assert [metrics for page in pages for metrics in page] == want
    assert all(len(page) == limit for page in pages[:-1])


T = FIRST_ERA + timedelta(days=100)


def test_boundaries_follow_the_definitions():
    events = facts([
        view("a", T, "p1", category="bags", price="10", name="帆布包"),
        view("b", T + timedelta(hours=1), "p1", category="shoes", name="新名字"),  # the latest carried wins
        # o1: refunded before its completed event arrives (counts once that is known); completed twice.
        refund("a", T - timedelta(days=3), "o1", "2"),
        order("a", T + timedelta(hours=2), "o1", [("p1", 2, "5.00"), ("p2", 1, "0.01")], total="10.01"),
        order("b", T + timedelta(hours=3), "o1", [("p1", 9, "5.00")]),
        # o2 completed before the range: not placed in it, though its second completion falls inside.
        order("b", T - timedelta(days=1), "o2", [("p3", 1, "7")]),
        order("b", T + timedelta(hours=4), "o2", [("p3", 1, "7")]),
        review("a", T + timedelta(days=1) - timedelta(microseconds=1), 1, "p1"),
        review("b", T + timedelta(days=1), 5, "p1"),  # at the range's end: outside
    ])
    start, end, as_of = T, T + timedelta(days=1), T + timedelta(days=30)
    with duck_of(events) as duck:
        got = all_products(duck.cursor(), start, end, as_of)
    assert got == product_metrics(events, start, end, as_of)
    p1, p2 = got
    assert (p1.product_id, p1.name, p1.category, p1.units, p1.buyers, p1.return_rate) == (
        "p1", "新名字", "shoes", 2, 1, 1.0)
    assert (p1.review_count, p1.avg_rating, p1.negative_share) == (1, 1.0, 1.0)
    assert (p2.product_id, str(p2.gmv), p2.uv_value) == ("p2", "0.01", None)
