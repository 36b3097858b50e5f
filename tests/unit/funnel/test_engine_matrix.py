"""The DuckDB product matrix (services.funnel.engine.matrix) gives exactly the reference domain's matrix with
lifecycle stages (services.funnel.domain.products.product_matrix) on random histories, for every as_of and page
size; and at the thresholds of the tier rules and lifecycle stages."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.funnel.domain.products import product_matrix
from services.funnel.engine import matrix as engine
from tests.integration.funnel.helpers import facts, order, view
from tests.integration.funnel.test_property import FIRST_ERA, build, histories
from tests.unit.funnel.duck import applications, duck_of, erased


def whole_matrix(cursor, as_of):
    """Every entry, by walking the pages."""
    return [entry for page in walk(cursor, as_of, 10_000) for entry in page]


def walk(cursor, as_of, limit):
    pages, after = [], None
    while True:
        page, more = engine.matrix_page(cursor, as_of, after=after, limit=limit)
        pages.append(page)
        if not more:
            return pages
        after = page[-1].product_id


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=histories, limit=st.integers(1, 5), weeks_later=st.integers(0, 8), applied=applications)
def test_equal_to_the_domain_on_random_histories_page_by_page(raw, limit, weeks_later, applied):
    # The copy applied in random batches with product_state folded at random points, a person erased or not.
    arrived = facts(build(raw, 0))
    known = erased(arrived, applied["erase"])
    # From inside the busy weeks to weeks after them, where the 56 days looked back reach past the history.
    as_of = FIRST_ERA + timedelta(hours=raw["as_of_hours"], weeks=weeks_later)
    want = product_matrix(known, as_of)
    with duck_of(arrived, **applied) as duck:
        assert whole_matrix(duck.cursor(), as_of) == want
        pages = walk(duck.cursor(), as_of, limit)
    assert [entry for page in pages for entry in page] == want


AS_OF = FIRST_ERA + timedelta(days=100)
RECENTLY = AS_OF - timedelta(days=1)


def _product(product_id, *, price, category="bags", viewers=1, units=0, when=RECENTLY):
    events = [view(f"{product_id}-v{n}", when, product_id, category=category, price=price) for n in range(viewers)]
    if units:
        events.append(order(f"{product_id}-b", when, f"{product_id}-o-{when:%j}", [(product_id, units, price or "1")]))
    return events


def test_tiers_and_stages_at_their_thresholds_match_the_domain():
    # Ten priced bags (the dearest exactly at the 0.9 share below), two unpriced, one without a category; units
    # around the median; uv shares around 0.2; one product sold exactly 1.2 x, one 0.8 x its previous four weeks (maturity both).
    events = [event for n in range(10) for event in _product(f"b{n}", price=str(10 * (n + 1)), viewers=n % 4 + 1,
                                                             units=n % 3)]
    events += _product("u1", price=None, viewers=9, units=4) + _product("u2", price=None, category=None)
    events += _product("g", price="5", units=6) + _product("g", price="5", units=5, when=AS_OF - timedelta(days=40))
    events += _product("d", price="5", units=4) + _product("d", price="5", units=5, when=AS_OF - timedelta(days=40))
    # Seen first exactly 28 days before as_of: not introduced any more; a microsecond later: introduced.
    events += _product("old", price="7", when=AS_OF - timedelta(days=28))
    events += _product("old", price="7") + _product("new", price="7")
    events += _product("new", price="7", when=AS_OF - timedelta(days=28) + timedelta(microseconds=1))
    want = product_matrix(facts(events), AS_OF)
    with duck_of(facts(events)) as duck:
        got = whole_matrix(duck.cursor(), AS_OF)
    assert got == want
    by_id = {entry.product_id: entry for entry in got}
    assert by_id["b9"].suggested_tier == "flagship"
    assert (by_id["g"].lifecycle, by_id["d"].lifecycle) == ("maturity", "maturity")
    assert (by_id["old"].lifecycle, by_id["new"].lifecycle) == ("inactive", "introduction")
    assert {entry.suggested_tier for entry in got} >= {"flagship", "traffic_driver", "profit", "long_tail"}
