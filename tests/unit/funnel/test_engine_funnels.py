"""The DuckDB funnel engine (services.funnel.engine.funnels) gives exactly the reference domain's answer
(services.funnel.domain.funnels.funnel_result) on random histories loaded into a fresh copy, and at the
definitions' boundaries; it declines (None) the definitions in which one event could match two steps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.db import cents
from libs.common.events import epoch_micros
from services.funnel.adapters.mirror import (
    create_tables,
    fold_state,
)
from services.funnel.domain.facts import DIRECT, EVENT_TYPES, FunnelEvent, History, OrderFacts, OrderItem
from services.funnel.domain.funnels import (
    DEFAULT_FUNNEL,
    FunnelDefinition,
    FunnelStep,
    _matches,
    funnel_result,
)
from services.funnel.engine import funnels as engine
from services.funnel.engine import person_hashes, prior_views
from services.funnel.engine.funnels import funnel_result_sql, handles
from tests.integration.funnel.helpers import facts
from tests.integration.funnel.test_property import CUSTOM_FUNNELS, FIRST_ERA, build
from tests.integration.funnel.test_property import histories as shop_histories

from .builders import at, cart, inquiry, item, order, refund, view
from .duck import append_facts, erased, stale_latest_views
from .duck import duck_of as applied_copy


def load(connection: duckdb.DuckDBPyConnection, facts: Sequence[FunnelEvent]) -> duckdb.DuckDBPyConnection:
    """The copy holding exactly these facts, as the service stores them (first arrival of an event_id)."""
    first = list({fact.event_id: fact for fact in reversed(facts)}.values())
    # Every table of another example's copy dropped (the state's too: funnels read the day sets and the registry),
    # then created afresh.
    for (table,) in connection.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall():
        connection.execute(f'DROP TABLE "{table}"')
    create_tables(connection)
    # In two batches, product_state folded after the first: products' categories come from the state and the
    # rows beside it (or, for an as_of before the state's horizon, from the events).
    append_facts(connection, first[: len(first) // 2], 1)
    fold_state(connection, 1)
    append_facts(connection, first[len(first) // 2:], 2)
    return connection


def duck_of(facts: Sequence[FunnelEvent]) -> duckdb.DuckDBPyConnection:
    return load(duckdb.connect(":memory:", config={"threads": 2}), facts)


def as_stored(facts: Sequence[FunnelEvent]) -> list[FunnelEvent]:
    """The facts as the service reads them back: money from integer cents (so Decimals print alike)."""

    def back(amount: Decimal | None) -> Decimal | None:
        return None if amount is None else Decimal(cents(amount)).scaleb(-2)

    stored = []
    for fact in facts:
        order = fact.order and replace(
            fact.order, total=back(fact.order.total),
            items=tuple(replace(line, unit_price=back(line.unit_price)) for line in fact.order.items),
        )
        stored.append(replace(fact, order=order))
    return stored


def assert_same(definition, facts, start, end, as_of, breakdown=None, connection=None):
    """The engine's answer is the reference's, field by field, breakdown keys in the same order; by the copy's
    stored person numbers and, as over other files of the rows, without them."""
    want = funnel_result(definition, as_stored(facts), start, end, as_of, breakdown)
    duck = connection or duck_of(facts)
    try:
        got = funnel_result_sql(duck.cursor(), definition, start, end, as_of, breakdown)
        assert funnel_result_sql(duck.cursor(), definition, start, end, as_of, breakdown, kept=False) == got
    finally:
        if connection is None:
            duck.close()
    assert got == want
    # Equal Decimals may still print differently, and dict equality ignores key order.
    assert repr(got.converted_value) == repr(want.converted_value)
    if want.breakdown is not None:
        assert list(got.breakdown) == list(want.breakdown)
        for key, part in want.breakdown.items():
            assert repr(got.breakdown[key].converted_value) == repr(part.converted_value)
    return got


# --- random histories -----------------------------------------------------------------------------------------

PERSONS = ("ann", "bob", "cid")
PRODUCTS = ("p1", "p2", "p3")
CATEGORIES = (None, "shoes", "hats")
SOURCES = (DIRECT, DIRECT, "ads", "mail")
ORDER_IDS = ("o1", "o2", "o3", "o4", "o5")


def money(cents_value: int) -> Decimal:
    """Money as the service reads it back (integer cents, scaled)."""
    return Decimal(cents_value).scaleb(-2)


# Few distinct instants (so that simultaneous events are common), a few microsecond neighbours of them.
instants = st.tuples(st.integers(0, 10), st.sampled_from((0, 0, 0, 1, -1))).map(
    lambda t: at(minutes=t[0], microseconds=t[1])
)
# Now and then the largest amount three of which fit an order line's bound (SPEC.md "Events").
amounts = st.one_of(st.integers(0, 5000), st.just(33_333_333_333_333)).map(money)
order_lines = st.lists(
    st.builds(OrderItem, st.sampled_from(PRODUCTS), st.sampled_from(CATEGORIES), st.integers(1, 3), amounts),
    max_size=2,
)


@st.composite
def histories(draw, definition: FunnelDefinition | None = None, starts=instants) -> list[FunnelEvent]:
    """Events of a few persons over ten minutes: random ones, and journeys through the definition's first steps
    (each event made to match its step, at non-decreasing times). Orders reuse few order ids (so duplicates
    and refunds are common); product categories change over time and are often left out."""
    events: list[FunnelEvent] = []

    def event_id() -> str:
        # Event ids out of time order, so that ties by event_id are not ties by arrival.
        return f"e{draw(st.integers(0, 99)):02d}-{len(events)}"

    def event(kind, person, when, source, product, category, journey=False) -> FunnelEvent:
        if kind == "order":
            status = draw(st.sampled_from(("completed", "completed", "completed", "refunded")))
            # Rarely, an order event carries a product too: it carries its category, but is about its lines (which
            # carry theirs after it).
            carried = draw(st.sampled_from((None, None, None, None, product)))
            lines = tuple(draw(order_lines)) if status == "completed" else ()
            if product is not None and status == "completed":
                line_category = draw(st.sampled_from(CATEGORIES)) if carried else category
                lines = (*lines, OrderItem(product, line_category, draw(st.integers(1, 3)), draw(amounts)))
                lines = tuple(draw(st.permutations(lines)))
            total = draw(st.one_of(st.none(), amounts))
            facts = OrderFacts(draw(st.sampled_from(ORDER_IDS)), status, lines, total)
            return FunnelEvent(event_id(), "order", person, when, source, product_id=carried,
                               category=carried and category, order=facts)
        if kind == "inquiry":
            about = product if journey else draw(st.sampled_from((None, product)))
            return FunnelEvent(event_id(), "inquiry", person, when, source, product_id=about,
                               category=about and category)
        return FunnelEvent(event_id(), kind, person, when, source, product_id=product or "p1", category=category,
                           rating=3 if kind == "review" else None)

    for _ in range(draw(st.integers(0, 16))):
        events.append(event(draw(st.sampled_from(EVENT_TYPES)), draw(st.sampled_from(PERSONS)), draw(instants),
                            draw(st.sampled_from(SOURCES)), draw(st.sampled_from(PRODUCTS)),
                            draw(st.sampled_from(CATEGORIES))))
    steps = definition.steps if definition is not None else ()
    for _ in range(draw(st.integers(1, 5)) if steps else 0):
        person, when, product = draw(st.sampled_from(PERSONS)), draw(starts), draw(st.sampled_from(PRODUCTS))
        # Often the whole way, but timed so that the window may still cut it short.
        for step in steps[: draw(st.one_of(st.just(len(steps)), st.integers(1, len(steps))))]:
            events.append(event(
                step.type, person, when, step.source or draw(st.sampled_from(SOURCES)), step.product_id or product,
                step.category or draw(st.sampled_from(CATEGORIES)), journey=True,
            ))
            when += timedelta(minutes=draw(st.sampled_from((0, 0, 1, 2))), microseconds=draw(st.integers(-1, 1)))
    return events


# Each filter is left out most of the time, so that funnels often go some way.
filters = st.fixed_dictionaries({
    "product_id": st.sampled_from((*[None] * 9, *PRODUCTS)),
    "category": st.sampled_from((*[None] * 8, "shoes", "hats")),
    "source": st.sampled_from((*[None] * 8, DIRECT, "ads")),
})


@st.composite
def definitions(draw) -> FunnelDefinition:
    """1-4 steps of distinct types, sometimes with a second step of one type set apart from the first by its
    filters (then no event can match both), or not (then the engine must decline)."""
    count = draw(st.integers(1, 4))
    types = draw(st.permutations(EVENT_TYPES))[:count]
    steps = [FunnelStep(kind, **draw(filters)) for kind in types]
    unit = draw(st.sampled_from(("person", "product")))
    if count > 1 and draw(st.integers(0, 2)) == 0:
        index = draw(st.integers(1, count - 1))
        earlier = draw(st.integers(0, index - 1))
        kind = steps[earlier].type
        field = draw(st.sampled_from(("source", "product_id", "category", None)))
        values = {"source": ("ads", "mail"), "product_id": ("p1", "p2"), "category": ("shoes", "hats")}
        if field is not None:
            steps[earlier] = FunnelStep(kind, **{**_where(steps[earlier]), field: values[field][0]})
            steps[index] = FunnelStep(kind, **{**draw(filters), field: values[field][1]})
        else:
            steps[index] = FunnelStep(kind, **draw(filters))
    window = draw(st.sampled_from((0, 60, 120, 180, 300, 600, 7 * 24 * 3600)))
    return FunnelDefinition("random", tuple(steps), window_seconds=window, unit=unit)


def _where(step: FunnelStep) -> dict[str, str | None]:
    return {"product_id": step.product_id, "category": step.category, "source": step.source}


# [start, end) and as_of in minutes: ranges around the events' ten minutes, as_of often after them all, but
# also before or among them.
ranges = st.tuples(
    st.integers(-1, 4), st.sampled_from((0, 2, 5, 8, 10, 12)), st.sampled_from((30, 30, 30, -2, 1, 3, 5, 7, 9, 11))
).map(lambda t: (at(minutes=t[0]), at(minutes=t[0] + t[1]), at(minutes=t[2])))


@st.composite
def cases(draw, drawn_definitions=definitions()):
    """A definition, a history with journeys through it, a range, an as_of and a breakdown."""
    definition = draw(drawn_definitions)
    start, end, as_of = draw(ranges)
    # Journeys start anywhere, or in the range.
    in_range = st.integers(0, max(0, (end - start) // timedelta(minutes=1) - 1)).map(
        lambda m: start + timedelta(minutes=m))
    facts = draw(histories(definition, st.one_of(instants, in_range)))
    return definition, facts, (start, end, as_of), draw(st.sampled_from((None, "source", "category")))


def _an_event_matches_two_steps(definition: FunnelDefinition, facts: Sequence[FunnelEvent], as_of) -> bool:
    """Whether some stored event, in some unit, matches two of the steps (by the reference's own _matches)."""
    history = History(facts, max(as_of, at(days=1)))
    for event in history.events.items:
        for products in ((p,) for p in event.product_ids) if definition.unit == "product" else (event.product_ids,):
            matched = [_matches(step, event.type, event.source, products, history) for step in definition.steps]
            if sum(matched) > 1:
                return True
    return False


@pytest.fixture(scope="module")
def copy() -> Iterator[duckdb.DuckDBPyConnection]:
    """One copy for the random examples, refilled by each (a new database per example costs more than it)."""
    with duckdb.connect(":memory:", config={"threads": 2}) as connection:
        yield connection


# How the copy is applied: batch cuts, person numbers folded after some batches (-1: after the erasure), and a
# person erased (their rows rewritten under a new key, so a new number) or not.
applications = st.fixed_dictionaries({
    "cuts": st.lists(st.integers(0, 40), max_size=4),
    "folds": st.sets(st.integers(-1, 4), max_size=3),
    "erase": st.sampled_from((None, None, *PERSONS)),
})


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), collide=st.booleans(), applied=applications)
def test_equal_to_the_domain_on_random_histories(case, collide, applied):
    definition, facts, (start, end, as_of), breakdown = case
    # The copy applied in random batches, its registry of person numbers folded at random points, with an erasure
    # or not; with collide, persons numbered (stored, and computed by the query) by a hash that often collides:
    # each collision must be noticed and undone.
    with colliding_hash() if collide else nullcontext(), applied_copy(facts, **applied) as duck:
        _check(duck, definition, erased(facts, applied["erase"]), start, end, as_of, breakdown)


# Person funnels that start with every view: step 2 is joined to its persons' latest view from the rows' ``pv``,
# which the fold keeps (services/funnel/engine/prior_views.py). The test above draws few of them.
@st.composite
def viewing_definitions(draw) -> FunnelDefinition:
    later = draw(st.permutations([kind for kind in EVENT_TYPES if kind != "view"]).filter(lambda k: k[0] != "order"))
    steps = (FunnelStep("view"), *(FunnelStep(kind, **draw(filters)) for kind in later[: draw(st.integers(1, 3))]))
    window = draw(st.sampled_from((0, 60, 120, 180, 300, 600, 7 * 24 * 3600)))
    return FunnelDefinition("viewing", steps, window_seconds=window)


@contextmanager
def queries_made() -> Iterator[list[dict]]:
    """The options of every query the engine builds meanwhile."""
    made: list[dict] = []
    real = engine._query

    def spy(*args, **options):
        made.append(options)
        return real(*args, **options)

    engine._query = spy
    try:
        yield made
    finally:
        engine._query = real


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(viewing_definitions()), applied=applications, bucket_rows=st.sampled_from((2_000_000, 1, 7)))
def test_step_two_from_the_latest_view_equals_the_domain(case, applied, bucket_rows):
    definition, facts, (start, end, as_of), breakdown = case
    # The fold in buckets of persons (by number) as a large first load computes it: here of a row or a few.
    with bucketed(bucket_rows), queries_made() as made, applied_copy(facts, **applied) as duck:
        _check(duck, definition, erased(facts, applied["erase"]), start, end, as_of, breakdown)
        assert stale_latest_views(duck) == 0
    assert any(options.get("prior") for options in made)  # the wider range of _check always asks


@contextmanager
def bucketed(rows: int) -> Iterator[None]:
    saved = prior_views.BUCKET_ROWS
    prior_views.BUCKET_ROWS = rows
    try:
        yield
    finally:
        prior_views.BUCKET_ROWS = saved


@contextmanager
def colliding_hash(template: str = "(hash({}) % 3)") -> Iterator[None]:
    saved = engine._HASH, person_hashes.NUMBER
    engine._HASH, person_hashes.NUMBER = template, template.format("person_key")
    try:
        yield
    finally:
        engine._HASH, person_hashes.NUMBER = saved


def _check(duck, definition, facts, start, end, as_of, breakdown):
    if not handles(definition):
        assert funnel_result_sql(duck.cursor(), definition, start, end, as_of, breakdown) is None
        return
    assert not _an_event_matches_two_steps(definition, facts, as_of)
    assert_same(definition, facts, start, end, as_of, breakdown, connection=duck)
    # The same copy answers any other as_of and range: only what was known then counts.
    assert_same(definition, facts, start - timedelta(minutes=1), end + timedelta(minutes=3),
                as_of + timedelta(minutes=7), breakdown, connection=duck)


# Shop histories of the service's integration property test: events made by ingest's own model and mapped to
# facts as the consumer maps them, over two busy weeks (some over ten), hour by hour.
SHOP_FUNNELS = (
    DEFAULT_FUNNEL, *CUSTOM_FUNNELS.values(),
    FunnelDefinition("four", tuple(FunnelStep(kind) for kind in ("view", "add_to_cart", "inquiry", "order")),
                     window_seconds=14 * 24 * 3600),
    FunnelDefinition("per product", (FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("order")),
                     window_seconds=14 * 24 * 3600, unit="product"),
)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=shop_histories, breakdown=st.sampled_from((None, "source", "category")))
def test_equal_to_the_domain_on_shop_histories(copy, raw, breakdown):
    known = facts(build(raw, 0))
    first_day, days = raw["span_days"]
    start = FIRST_ERA + timedelta(days=first_day)
    as_of = FIRST_ERA + timedelta(hours=raw["as_of_hours"])
    duck = load(copy, known)
    for definition in SHOP_FUNNELS:
        assert_same(definition, known, start, start + timedelta(days=days), as_of, breakdown, connection=duck)


# --- the definitions' boundaries ------------------------------------------------------------------------------

FOUR = (FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("inquiry"), FunnelStep("order"))


def person_funnel(*steps: FunnelStep, window_seconds: int = 3600, unit: str = "person") -> FunnelDefinition:
    return FunnelDefinition("case", steps or FOUR, window_seconds=window_seconds, unit=unit)


def test_the_window_closes_at_t1_plus_w_included():
    w = 3600
    facts = [
        view("ann", at(), event_id="a1"), cart("ann", at(minutes=10), event_id="a2"),
        inquiry("ann", at(minutes=20), event_id="a3"), order("ann", at(seconds=w), "o1", "12.50", event_id="a4"),
        view("bob", at(), event_id="b1"), cart("bob", at(minutes=10), event_id="b2"),
        inquiry("bob", at(minutes=20), event_id="b3"),
        order("bob", at(seconds=w, microseconds=1), "o2", "7.00", event_id="b4"),
    ]
    got = assert_same(person_funnel(window_seconds=w), facts, at(), at(hours=1), at(days=1), "source")
    assert got.counts == (2, 2, 2, 1)
    assert got.median_seconds_to_convert == float(w)
    assert got.converted_value == Decimal("12.50")


def test_equal_timestamps_chain_and_tie_by_event_id():
    moment = at(minutes=5)
    facts = [
        # Every step at one instant: a chain of distinct events, all at t(e1).
        order("ann", moment, "o1", "3.00", event_id="x9"), inquiry("ann", moment, event_id="x2"),
        cart("ann", moment, event_id="x5"), view("ann", moment, source="ads", event_id="x7"),
        view("ann", moment, source="mail", event_id="x3"),
        # Two orders complete bob's funnel at the same instant: the smaller event_id is the completing one.
        view("bob", at(), event_id="y1"), cart("bob", at(minutes=1), event_id="y2"),
        inquiry("bob", at(minutes=2), event_id="y3"),
        order("bob", at(minutes=3), "o3", "5.00", event_id="y5"),
        order("bob", at(minutes=3), "o2", "4.00", event_id="y4"),
    ]
    got = assert_same(person_funnel(), facts, at(), at(hours=1), at(days=1), "source")
    assert got.counts == (2, 2, 2, 2)
    assert got.converted_value == Decimal("7.00")
    assert list(got.breakdown) == ["(direct)", "mail"]  # ann's entry is x3 (mail), the smaller event_id
    assert got.median_seconds_to_convert == 90.0


def test_as_of_before_the_later_steps():
    facts = [
        view("ann", at(), event_id="a1"), cart("ann", at(minutes=10), event_id="a2"),
        inquiry("ann", at(minutes=20), event_id="a3"), order("ann", at(minutes=30), "o1", event_id="a4"),
        view("bob", at(minutes=16), event_id="b1"),
    ]
    for minutes in (-1, 0, 5, 15, 25, 29, 30, 80):
        assert_same(person_funnel(), facts, at(), at(hours=1), at(minutes=minutes), "category")
    got = assert_same(person_funnel(), facts, at(), at(hours=1), at(minutes=25))
    assert got.counts == (2, 1, 1, 0)
    assert got.in_progress == (1, 0, 1, 0)  # both windows (one hour) are still open at as_of


# Step 2 from the rows' latest view (prior_views.py): the facts applied in this order, a batch each, the state
# folded after the batches numbered in ``folds``.
VIEW_CART = person_funnel(FunnelStep("view"), FunnelStep("add_to_cart"), window_seconds=600)


def _level_two(facts, folds, start, end):
    copy = applied_copy(facts[::-1], cuts=range(len(facts)), folds=folds)  # (applied_copy keeps the last of each id)
    assert copy.execute("SELECT list(occurred_us ORDER BY applied) FROM events").fetchone()[0] == [
        epoch_micros(fact.occurred_at) for fact in facts]
    with queries_made() as made:
        got = assert_same(VIEW_CART, facts, start, end, at(hours=1), connection=copy)
    assert any(options["prior"] for options in made)
    return got.counts


def test_a_cart_applied_after_the_fold_is_joined_to_its_views():
    facts = [view("ann", at(minutes=1)), cart("ann", at(minutes=2))]
    assert _level_two(facts, {0}, at(), at(minutes=10)) == (1, 1)  # the cart unfolded, its view folded


def test_a_late_view_before_a_folded_cart_counts_before_and_after_its_fold():
    # The cart folded with no view before it (pv NULL); a view before it arrives late.
    facts = [cart("ann", at(minutes=5)), view("ann", at(minutes=3))]
    assert _level_two(facts, {0}, at(), at(minutes=10)) == (1, 1)  # ann masked until the view is folded
    assert _level_two(facts, {0, 1}, at(), at(minutes=10)) == (1, 1)  # the fold sets the cart's pv again


def test_a_late_view_between_a_folded_view_and_cart_becomes_the_carts_latest():
    # The cart's latest view was the one before the range, until a later one, in range, was folded.
    facts = [view("ann", at(minutes=1)), cart("ann", at(minutes=5)), view("ann", at(minutes=3))]
    assert _level_two(facts, {1, 2}, at(minutes=2), at(minutes=10)) == (1, 1)


def test_a_cart_after_the_range_whose_latest_view_is_after_it_too():
    # The range ends at 4: the cart at 6 chains from the view at 2, not from its latest view (5, out of range).
    facts = [view("ann", at(minutes=2)), view("ann", at(minutes=5)), cart("ann", at(minutes=6))]
    assert _level_two(facts, {2}, at(), at(minutes=4)) == (1, 1)


@pytest.mark.parametrize("folds", [(), (0,)])
def test_a_unit_converts_while_its_latest_step_1_event_is_within_w_of_as_of(folds):
    w = 3600
    as_of = at(hours=2)
    closed = as_of - timedelta(seconds=w)  # t + W == as_of: that window closed at as_of
    open_ = closed + timedelta(microseconds=1)
    facts = [
        view("ann", closed, event_id="a1"),  # level 1, closed
        view("bob", open_, event_id="b1"),  # level 1, converting
        # Level 2 by a view of t0, closed; a later view still open keeps no level-1 figure (cid is not level 1).
        view("cid", at(), event_id="c1"), cart("cid", at(minutes=1), event_id="c2"), view("cid", open_, event_id="c3"),
        # Level 2 whose latest start reaching it is exactly W before as_of: not converting.
        view("dan", closed, event_id="d1"), cart("dan", closed + timedelta(minutes=1), event_id="d2"),
    ]
    for connection in (None, applied_copy(facts, folds=folds)):
        got = assert_same(person_funnel(), facts, at(), as_of, as_of, connection=connection)
        assert got.counts == (4, 2, 0, 0)
        assert got.in_progress == (1, 0, 0, 0)


def test_the_fastest_conversion_and_the_earliest_completing_order_may_be_of_different_chains():
    facts = [
        # A slow chain completes first (o1 at 30 minutes, after 30), a fast one later (o2 at 50, after 5).
        view("ann", at(), event_id="a1"), cart("ann", at(minutes=10), event_id="a2"),
        inquiry("ann", at(minutes=20), event_id="a3"), order("ann", at(minutes=30), "o1", "10.00", event_id="a4"),
        view("ann", at(minutes=45), event_id="a5"), cart("ann", at(minutes=46), event_id="a6"),
        inquiry("ann", at(minutes=47), event_id="a7"), order("ann", at(minutes=50), "o2", "20.00", event_id="a8"),
    ]
    got = assert_same(person_funnel(), facts, at(), at(hours=1), at(days=1))
    assert (got.median_seconds_to_convert, got.converted_value) == (300.0, Decimal("10.00"))


def test_only_each_orders_earliest_completed_event_counts():
    facts = [
        view("ann", at(), event_id="a1"),
        # o1 completed twice in range: only the earlier (ties by event_id) counts, and ann is converted by it.
        order("ann", at(minutes=5), "o1", "10.00", event_id="a3"),
        order("ann", at(minutes=5), "o1", "99.00", event_id="a2"),
        view("bob", at(minutes=10), event_id="b1"),
        # o2 first completed before the range: its later duplicate in range is not bob's order.
        order("bob", at(minutes=-30), "o2", "20.00", event_id="b0"),
        order("bob", at(minutes=12), "o2", "20.00", event_id="b2"),
        refund("bob", at(minutes=13), "o2", event_id="b3"),
        # o3's earliest completed event comes after as_of: until then the earlier-known one counts.
        view("cid", at(minutes=1), event_id="c1"),
        order("cid", at(minutes=20), "o3", "30.00", event_id="c3"),
        order("cid", at(minutes=2), "o3", "31.00", event_id="c2"),
    ]
    definition = person_funnel(FunnelStep("view"), FunnelStep("order"))
    got = assert_same(definition, facts, at(), at(hours=1), at(days=1))
    assert got.counts == (3, 2)
    assert got.converted_value == Decimal("130.00")  # a2's 99.00 (a3's event_id is larger) and c2's 31.00
    assert_same(definition, facts, at(), at(hours=1), at(minutes=10))
    assert_same(person_funnel(FunnelStep("view"), FunnelStep("order"), unit="product"), facts, at(), at(hours=1),
                at(days=1), "category")


def test_an_order_without_total_is_worth_its_lines():
    lines = (item("p1", 2, "3.25", "shoes"), item("p2", 1, "10.00", "hats"), item("p1", 1, "1.00"))
    facts = [
        view("ann", at(), "p1", category="bags", event_id="a1"), view("ann", at(), "p2", event_id="a2"),
        order("ann", at(minutes=1), "o1", None, lines, event_id="a3"),
        view("bob", at(), "p2", event_id="b1"), order("bob", at(minutes=1), "o2", None, (), event_id="b2"),
        view("cid", at(), "p3", event_id="c1"),
    ]
    got = assert_same(person_funnel(FunnelStep("view"), FunnelStep("order")), facts, at(), at(hours=1), at(days=1),
                      "category")
    assert got.converted_value == Decimal("17.50")
    # Per product: p1 is worth 2 x 3.25 + 1 x 1.00 in o1, p2 10.00; the items carried p1's latest category.
    got = assert_same(person_funnel(FunnelStep("view"), FunnelStep("order"), unit="product"), facts, at(),
                      at(hours=1), at(days=1), "category")
    assert got.converted_value == Decimal("17.50")
    assert list(got.breakdown) == ["(none)", "hats", "shoes"]


def test_an_orders_category_is_its_first_lines_and_lines_carry_categories_after_the_event():
    lines = (item("p2", 1, "1.00", "hats"), item("p1", 1, "2.00", "shoes"), item("p2", 1, "3.00", "bags"))
    facts = [
        # The order carries p2 as its own product (category toys), then p2 again in two lines: bags is the latest.
        FunnelEvent("a1", "order", "ann", at(), product_id="p2", category="toys",
                    order=OrderFacts("o1", "completed", lines, money(600))),
        view("ann", at(minutes=1), "p1", event_id="a2"),
        order("bob", at(), "o2", "1.00", (item("p1", 1, "1.00"), item("p2", 1, "1.00")), event_id="b1"),
        view("bob", at(minutes=1), "p3", category="toys", event_id="b2"),
    ]
    definition = person_funnel(FunnelStep("order"), FunnelStep("view"))
    got = assert_same(definition, facts, at(), at(hours=1), at(days=1), "category")
    assert list(got.breakdown) == ["bags", "shoes"]  # ann by p2 (first line), bob by p1
    got = assert_same(person_funnel(FunnelStep("order", category="bags"), FunnelStep("view")), facts, at(),
                      at(hours=1), at(days=1), "category")
    assert got.counts == (2, 2)  # both orders have a line of p2, whose category is bags


def test_filters_match_the_products_latest_category_and_any_order_line():
    facts = [
        view("ann", at(), "p1", category="shoes", event_id="a1"),
        order("ann", at(minutes=1), "o1", "9.00", (item("p2", 1, "4.00"), item("p1", 1, "5.00")), event_id="a2"),
        # p1 becomes a hat later: as known at as_of, its category is hats.
        view("bob", at(minutes=30), "p1", category="hats", event_id="b1"),
    ]
    definition = person_funnel(FunnelStep("view", category="shoes"), FunnelStep("order", product_id="p1"))
    got = assert_same(definition, facts, at(), at(hours=1), at(minutes=10))
    assert got.counts == (1, 1)
    got = assert_same(definition, facts, at(), at(hours=1), at(hours=1))
    assert got.counts == (0, 0)


@pytest.mark.parametrize("steps, unit", [
    ((FunnelStep("view"), FunnelStep("view")), "person"),
    ((FunnelStep("view", source="ads"), FunnelStep("add_to_cart"), FunnelStep("view")), "person"),
    ((FunnelStep("order", product_id="p1"), FunnelStep("order", product_id="p2")), "person"),
    ((FunnelStep("view", product_id="p1"), FunnelStep("view", category="shoes")), "product"),
])
def test_declines_definitions_where_one_event_could_match_two_steps(steps, unit):
    facts = [view("ann", at(), "p1", event_id="a1"), view("ann", at(minutes=1), "p1", event_id="a2")]
    definition = FunnelDefinition("twice", steps, unit=unit)
    assert not handles(definition)
    with duck_of(facts) as duck:
        assert funnel_result_sql(duck.cursor(), definition, at(), at(hours=1), at(days=1), None) is None


def test_answers_definitions_whose_repeated_steps_cannot_share_an_event():
    definition = FunnelDefinition(
        "two views", (FunnelStep("view", source="ads"), FunnelStep("add_to_cart"), FunnelStep("view", source="mail"))
    )
    facts = [
        view("ann", at(), source="ads", event_id="a1"), cart("ann", at(minutes=1), event_id="a2"),
        view("ann", at(minutes=1), source="mail", event_id="a3"), view("bob", at(), source="ads", event_id="b1"),
        view("bob", at(minutes=2), source="mail", event_id="b2"), cart("bob", at(minutes=3), event_id="b3"),
    ]
    got = assert_same(definition, facts, at(), at(hours=1), at(days=1), "source")
    assert got.counts == (2, 2, 1)


class _Counting:
    """A cursor that counts the statements run on it."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self.cursor, self.statements, self.calls = cursor, 0, []

    def execute(self, *args, **kwargs):
        self.statements += 1
        self.calls.append(args)
        return self.cursor.execute(*args, **kwargs)

    def __getattr__(self, name):  # register / unregister (an Arrow table the clash check reads)
        return getattr(self.cursor, name)


SHARING = [
    view("ann", at(), "p1", source="ads", event_id="a1"), cart("ann", at(minutes=1), "p1", event_id="a2"),
    view("bob", at(minutes=2), "p1", event_id="b1"), cart("bob", at(minutes=3), "p2", event_id="b2"),
    # cid never enters: his cart must not complete anyone's chain
    cart("cid", at(minutes=2), "p1", event_id="c1"),
]


@pytest.mark.parametrize("breakdown", [None, "source"])
@pytest.mark.parametrize("unit", ["person", "product"])
def test_units_sharing_a_computed_hash_are_told_apart(unit, breakdown):
    definition = person_funnel(FunnelStep("view"), FunnelStep("add_to_cart"), unit=unit)
    want = funnel_result(definition, SHARING, at(), at(hours=1), at(days=1), breakdown)
    with duck_of(SHARING) as duck:
        plain = _Counting(duck.cursor())
        assert funnel_result_sql(plain, definition, at(), at(hours=1), at(days=1), breakdown, kept=False) == want
        assert plain.statements == 1
        with colliding_hash("(hash({}) % 1)"):  # every unit under one number: noticed, then keyed by the keys
            colliding = _Counting(duck.cursor())
            assert funnel_result_sql(colliding, definition, at(), at(hours=1), at(days=1), breakdown,
                                     kept=False) == want
        assert colliding.statements == 2
    assert want.counts == ((2, 2) if unit == "person" else (2, 1))


def test_an_unfolded_key_under_a_registered_keys_number_is_told_apart():
    # ann's rows folded (her key registered under the one number every key has here), bob's not yet: the clash is
    # not recorded, but the unfolded key under a registered number must be noticed.
    facts = [view("ann", at(), event_id="a1"), cart("ann", at(minutes=1), event_id="a2"),
             view("bob", at(minutes=2), event_id="b1"), cart("bob", at(minutes=3), event_id="b2")]
    with colliding_hash("(hash({}) % 1)"), applied_copy(facts[::-1], cuts=[2], folds={0}) as duck:
        folded = duck.execute("SELECT folded FROM copy_state").fetchone()[0]
        assert duck.execute("SELECT count(*) FROM hash_clashes").fetchone()[0] == 0
        assert person_hashes.clash_possible(duck.cursor(), folded)
        got = assert_same(VIEW_CART, facts, at(), at(hours=1), at(days=1), connection=duck)
    assert got.counts == (2, 2)


def _queries(cursor: _Counting) -> list[str]:
    return [args[0] for args in cursor.calls if args and "WITH" in args[0] and "s0 AS" in args[0]]


@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize("breakdown", [None, "source"])
@pytest.mark.parametrize("unit", ["person", "product"])
def test_persons_sharing_a_stored_number_are_told_apart(unit, breakdown, folded):
    # Every person under one stored number: the registry records the clash at the fold (folded), or the rows not
    # folded yet show it (not folded); then the answer is numbered otherwise, and exact.
    definition = person_funnel(FunnelStep("view"), FunnelStep("add_to_cart"), unit=unit)
    want = funnel_result(definition, SHARING, at(), at(hours=1), at(days=1), breakdown)
    with colliding_hash("(hash({}) % 1)"), applied_copy(SHARING, folds={0} if folded else ()) as duck:
        assert duck.execute("SELECT count(*) FROM hash_clashes").fetchone()[0] == (1 if folded else 0)
        counted = _Counting(duck.cursor())
        assert funnel_result_sql(counted, definition, at(), at(hours=1), at(days=1), breakdown) == want
        assert [".ph" in query for query in _queries(counted)] == [False, False]
    with applied_copy(SHARING, folds={0} if folded else ()) as duck:
        counted = _Counting(duck.cursor())
        assert funnel_result_sql(counted, definition, at(), at(hours=1), at(days=1), breakdown) == want
        assert [".ph" in query for query in _queries(counted)] == [True]
