"""The DuckDB channel engine (services.funnel.engine.channels) gives exactly the reference domain's channel
metrics (services.funnel.domain.channels.channel_metrics) on random histories, for every range and as_of;
and at the edges of the 30-day lookback and of new customers."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from unittest import mock

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.funnel.adapters.mirror import create_tables, fold_state
from services.funnel.domain.channels import channel_metrics
from services.funnel.engine import channels as engine
from services.funnel.engine import kpi_state
from tests.integration.funnel.helpers import cart, facts, order, view
from tests.integration.funnel.test_property import FIRST_ERA, build, histories
from tests.unit.funnel.duck import append_facts, applications, duck_of, erased
from tests.unit.funnel.test_engine_products import span_of

# A long tail of sources: up to 40 names given to events of the history (views mostly), so that a day has many
# sources of one or two viewers each.
TAIL = st.lists(st.one_of(st.none(), st.integers(0, 39)), max_size=80)
# Views crowded into the first hours of the history's third day, or not: then a (day, source) has several viewers,
# who arrive in different batches (a bitstring made by one fold gets ids from the next).
CROWD = st.sampled_from((None, None, 2, 30))


def with_tail(arrived, tail, crowd=None):
    """The facts with the i-th one's source replaced by ``tail-<n>`` where ``tail[i]`` is n; with ``crowd``, each
    view moved into the ``crowd`` hours from the third day's start."""
    changed = []
    for i, fact in enumerate(arrived):
        if i < len(tail) and tail[i] is not None:
            fact = replace(fact, source=f"tail-{tail[i]}")
        if crowd and fact.type == "view":
            fact = replace(fact, occurred_at=FIRST_ERA + timedelta(days=2, minutes=(i * 37) % (crowd * 60)))
        changed.append(fact)
    return changed


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=histories, applied=applications, weeks_later=st.integers(0, 6),
       zone=st.sampled_from(("UTC", "America/New_York")), tail=TAIL, sparse=st.sampled_from((0, 1, 2, 10**9)),
       fold_bytes=st.sampled_from((1, 100, 1_000, 10_000, kpi_state.FOLD_BYTES)), crowd=CROWD)
def test_equal_to_the_domain_on_random_histories(raw, applied, weeks_later, zone, tail, sparse, fold_bytes, crowd):
    # The copy applied in random batches with the state (each order's counting event, each day's viewers per source
    # in the days of ``zone``) folded at random points, a person erased or not: buyers and new customers by the
    # state's person ids, or by key beside unfolded orders; viewers of whole days from the state. Sources in a long
    # tail or not; a (day, source) with more than ``sparse`` viewers a bitstring, the others id rows (0: every one a
    # bitstring, 10**9: none; 1 and 2: both, and id rows made a bitstring as later folds add viewers); a fold
    # aggregating as many days per statement as ``fold_bytes`` of bitstrings hold, one at least (histories span 2 to
    # 10 weeks: several chunks); views crowded into a day or two, or not.
    arrived = with_tail(facts(build(raw, 0)), tail, crowd)
    known = erased(arrived, applied["erase"])
    start, end, as_of = span_of(raw)
    inner = (start + timedelta(hours=5), end + timedelta(hours=7), start + timedelta(days=1, hours=3))
    # A range weeks later: customers who bought before it are not new.
    later = (start + timedelta(weeks=weeks_later), end + timedelta(weeks=weeks_later),
             as_of + timedelta(weeks=weeks_later))
    # Asked after the range: its whole days come from the state.
    after = (start, end, end + timedelta(days=1))
    # Every day of the history, asked after its end: the whole of the state.
    everything = (FIRST_ERA - timedelta(days=1), FIRST_ERA + timedelta(days=80), FIRST_ERA + timedelta(days=81))
    with mock.patch.object(kpi_state, "sparse_limit", lambda capacity: sparse), \
            mock.patch.object(kpi_state, "FOLD_BYTES", fold_bytes), duck_of(arrived, **applied, time_zone=zone) as duck:
        for span in ((start, end, as_of), inner, later, after, everything):
            assert engine.channel_metrics(duck.cursor(), *span) == channel_metrics(known, *span)
        # The state's size follows the viewers: a (day, source) is a bitstring or rows, each id once (an erasure's
        # rows folded again add none).
        assert duck.execute("SELECT count(*) FROM source_viewers SEMI JOIN source_presence USING (day_start, source) "
                            "UNION ALL SELECT count(*) - count(DISTINCT (day_start, source, id)) FROM source_viewers"
                            ).fetchall() == [(0,), (0,)]


T = FIRST_ERA + timedelta(days=100)
MONTH = timedelta(days=30)
TICK = timedelta(microseconds=1)


def test_lookback_ties_and_new_customers_match_the_domain():
    events = facts([
        # a: a sourced view exactly 30 days before the order counts; b's a microsecond earlier does not.
        view("a", T - MONTH, source="ads"), order("a", T, "oa"),
        view("b", T - MONTH - TICK, source="ads"), view("b", T, source="mail"), order("b", T, "ob"),
        # c: two sourced events at one instant: the larger event_id's source.
        view("c", T - timedelta(days=1), source="zeta", event_id="c-1"),
        cart("c", T - timedelta(days=1), source="alpha", event_id="c-2"), order("c", T, "oc"),
        # d bought before the range: not new. e's earlier completed event is of an order counted as f's.
        order("d", T - timedelta(days=3), "od0"), order("d", T, "od1", source="shop"),
        order("f", T - timedelta(days=5), "shared"), order("e", T - timedelta(days=4), "shared"),
        order("e", T + timedelta(hours=1), "oe", source="shop"),
    ])
    start, end, as_of = T - timedelta(hours=1), T + timedelta(days=1), T + timedelta(days=2)
    with duck_of(events) as duck:
        got = engine.channel_metrics(duck.cursor(), start, end, as_of)
    assert got == channel_metrics(events, start, end, as_of)
    by_source = {metrics.source: metrics for metrics in got}
    assert (by_source["ads"].orders, by_source["(direct)"].orders, by_source["alpha"].orders) == (1, 1, 1)
    assert (by_source["shop"].orders, by_source["shop"].new_customers) == (2, 1)


@pytest.mark.parametrize("sparse", [0, 1, 2])
def test_viewers_folded_later_join_their_day_and_source_in_either_kind(sparse):
    # One viewer a fold of the same (day, source): with a limit of 0 the first fold makes a bitstring and the next
    # ones or their ids into it; with 1 or 2 the ids are rows until a fold passes the limit and makes them a
    # bitstring. Each kind's count is the domain's, after every fold.
    day = FIRST_ERA + timedelta(days=2)
    viewers = facts([view(f"v{n}", day + timedelta(hours=n), source="ads") for n in range(4)])
    span = (day - timedelta(days=1), day + timedelta(days=2), day + timedelta(days=3))
    with mock.patch.object(kpi_state, "sparse_limit", lambda capacity: sparse), duckdb.connect() as duck:
        create_tables(duck, "UTC")
        for number, fact in enumerate(viewers, 1):
            append_facts(duck, [fact], number)
            fold_state(duck, number)
            kinds = duck.execute("SELECT (SELECT count(*) FROM source_presence), (SELECT count(*) FROM source_viewers)"
                                 ).fetchone()
            assert kinds == ((1, 0) if number > sparse else (0, number))
            got = engine.channel_metrics(duck.cursor(), *span)
            assert got == channel_metrics(viewers[:number], *span) and got[0].uv == number


def test_an_erasure_folded_again_keeps_each_viewer_once():
    # The erased person keeps their id: their rewritten view, folded again, adds no second row of the same id.
    day = FIRST_ERA + timedelta(days=2)
    viewers = facts([view("x0-ann", day, source="ads"), view("bob", day + timedelta(hours=1), source="ads")])
    span = (day - timedelta(days=1), day + timedelta(days=2), day + timedelta(days=3))
    with duck_of(viewers, folds={0, -1}, erase="x0-ann") as duck:
        assert duck.execute("SELECT count(*), count(DISTINCT id) FROM source_viewers").fetchone() == (2, 2)
        assert engine.channel_metrics(duck.cursor(), *span) == channel_metrics(erased(viewers, "x0-ann"), *span)


def test_a_range_over_a_clock_change_matches_the_domain():
    # Berlin's 2026-03-29 has 23 hours: a range of its local days, orders around the change.
    start, end = datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC)
    events = facts([view(f"u{i}", start + timedelta(hours=i), source=("ads", None)[i % 2]) for i in range(26)] +
                   [order(f"u{i}", start + timedelta(hours=i, minutes=30), f"o{i}") for i in range(0, 26, 3)])
    with duck_of(events) as duck:
        got = engine.channel_metrics(duck.cursor(), start, end, end)
    assert got == channel_metrics(events, start, end, end)
