"""The DuckDB KPI engine gives exactly the reference domain's figures (services.funnel.domain.kpis) on random
histories, per range and per day of a time zone, for every as_of; with the copy's KPI state folded at random
points (its days in the answer's zone or another, bitstrings that grow, a person erased) and without it (the
plain SQL); and at the definitions' boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import epoch_micros
from services.funnel.adapters.mirror import fold_state
from services.funnel.domain.kpis import daily_kpis, range_kpis
from services.funnel.engine import kpi_state
from services.funnel.engine.kpis import kpis
from tests.integration.funnel.helpers import facts, inquiry, order, refund, review, view
from tests.integration.funnel.test_property import ERA, FIRST_ERA, TIME_ZONE, ZONE, build, histories
from tests.unit.funnel.duck import applications, duck_of, erased


def _both(known, start, end, as_of, time_zone=TIME_ZONE):
    with duck_of(known) as duck:
        got = kpis(duck.cursor(), start, end, as_of, time_zone)
        assert kpis(duck.cursor(), start, end, as_of, time_zone, kept=False) == got
    return got, (range_kpis(known, start, end, as_of), daily_kpis(known, start, end, as_of, time_zone))


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=histories, applied=applications, state_zone=st.sampled_from((TIME_ZONE, TIME_ZONE, "UTC", "America/New_York")),
       capacity=st.sampled_from((1, 2, 64, kpi_state.MIN_CAPACITY)),
       fold_bytes=st.sampled_from((1, 100, 1_000, 10_000, kpi_state.FOLD_BYTES)))
def test_equal_to_the_domain_on_random_histories(raw, applied, state_zone, capacity, fold_bytes):
    # The copy applied in random batches with the state folded at random points, a person erased or not; the
    # state's days in the answer's zone or not; its bitstrings starting at `capacity` bits, growing as needed;
    # a fold's days aggregated one per statement, a few, or all in one (``fold_bytes``; histories span 2 to 10
    # weeks: many chunks, and their bounds).
    arrived = facts(build(raw, 0))
    known = erased(arrived, applied["erase"])
    base = FIRST_ERA.date()
    first_day, days = raw["span_days"]
    start, end = (datetime.combine(base + timedelta(days=d), datetime.min.time(), ZONE).astimezone(UTC)
                  for d in (first_day, first_day + days))
    as_of = FIRST_ERA + timedelta(hours=raw["as_of_hours"])
    # A range that starts and ends inside days, and an as_of inside it.
    inner = (start + timedelta(hours=5), end + timedelta(hours=7), start + timedelta(days=1, hours=3))
    with mock.patch.object(kpi_state, "MIN_CAPACITY", capacity), mock.patch.object(kpi_state, "FOLD_BYTES", fold_bytes), \
            duck_of(arrived, **applied, time_zone=state_zone) as duck:
        # ... and one after every event, where every day of the range is whole and the state answers for it.
        for span in ((start, end, as_of), inner, (start, end, FIRST_ERA + timedelta(days=100))):
            want = (range_kpis(known, *span), daily_kpis(known, *span, TIME_ZONE))
            assert kpis(duck.cursor(), *span, TIME_ZONE) == want
            assert kpis(duck.cursor(), *span, TIME_ZONE, kept=False) == want


T = FIRST_ERA + ERA


def test_boundaries_follow_the_definitions():
    events = facts([
        view("a", T, "p1"), view("a", T + timedelta(hours=1), "p1"), view("b", T + timedelta(days=1), "p2"),
        inquiry("a", T, "p1", response_seconds=30), inquiry("b", T + timedelta(hours=2), None, response_seconds=61.5),
        # a's order exactly 7 days after the inquiry converts it; b's comes a microsecond too late.
        order("a", T + timedelta(days=7), "o1", [("p1", 1, "10.00")], total="10.00"),
        order("b", T + timedelta(days=7, hours=2, microseconds=1), "o2", [("p2", 2, "5.00")], total=None),
        # o1 completed twice: counts once, at the earliest; its refund later counts on its own date.
        order("a", T + timedelta(days=8), "o1", [("p1", 1, "10.00")], total="10.00"),
        refund("a", T + timedelta(days=9), "o1", None), refund("b", T, "ghost", "3"),
        review("a", T, 2, "p1"), review("b", T, 5, "p2"),
    ])
    start, end = T - timedelta(days=1), T + timedelta(days=10)
    for as_of in (T + timedelta(days=30), T + timedelta(days=7), T + timedelta(days=8, hours=12)):
        got, want = _both(events, start, end, as_of)
        assert got == want, as_of
    got, _ = _both(events, start, end, T + timedelta(days=30))
    totals = got[0]
    assert (totals.orders, totals.refunds, totals.inquiry_conversion, totals.median_response_seconds) == (
        2, 10, 0.5, 45.75)
    assert (totals.avg_rating, totals.negative_share, totals.return_rate) == (3.5, 0.5, 0.5)


def test_days_across_clock_changes_and_partial_days_match_the_domain():
    # Berlin: 2026-03-29 has 23 hours, 2026-10-25 has 25; events around both midnights and both changes.
    start = datetime(2026, 3, 27, 21, 30, tzinfo=UTC)  # 22:30 local: the range begins late in a day
    moments = [start + timedelta(hours=h, minutes=m) for h in range(0, 24 * 215, 7) for m in (0, 59)]
    events = facts([view(f"u{i % 9}", moment, f"p{i % 4}") for i, moment in enumerate(moments)] +
                   [order(f"u{i % 5}", moment, f"o{i}", [("p1", 1, "3.00")])
                    for i, moment in enumerate(moments[::17])])
    end = start + timedelta(days=214, hours=3)
    got, want = _both(events, start, end, end, "Europe/Berlin")
    assert got == want
    assert len(got[1]) == 216 and sum(day.pv for day in got[1].values()) == got[0].pv


def test_gmv_of_the_largest_orders_stays_exact_past_64_bits():
    # 93,000 orders of the largest line (1,000,000 x 1,000,000.00 = 1,000,000,000,000.00, SPEC.md "Events"), no
    # total: their gmv in cents (9.3 x 10^18) is more than a 64-bit integer holds.
    count = 93_000
    start, end = T - timedelta(days=1), T + timedelta(days=2)
    one = facts([order("whale", T, "o", [("p1", 1_000_000, "1000000.00")], total=None)])
    with duck_of(one) as duck:
        # The one order copied in DuckDB (building 93,000 facts in Python takes seconds): ids e1.., o1.., a
        # microsecond apart.
        for table in ("events", "order_events"):
            duck.execute(f"INSERT INTO {table} SELECT {table}.* REPLACE (event_id || n AS event_id, order_id || n AS order_id,"
                         f" occurred_us + n AS occurred_us) FROM {table}, range(1, {count}) AS copies(n)")
        duck.execute(f"INSERT INTO order_items SELECT order_items.* REPLACE (event_id || n AS event_id)"
                     f" FROM order_items, range(1, {count}) AS copies(n)")
        got, _ = kpis(duck.cursor(), start, end, end, None)
    assert (got.orders, got.buyers, got.gmv) == (count, 1, count * 10**12)
    assert count * 10**14 > 2**63


class _Counting:
    """A DuckDB connection that counts the statements creating the presence fold's per-chunk table."""

    def __init__(self, connection):
        self.connection, self.chunks = connection, 0

    def execute(self, sql, *args):
        self.chunks += "TEMP TABLE presence_fold" in sql
        return self.connection.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.connection, name)


def test_a_folds_budget_sets_the_days_one_presence_statement_aggregates():
    """``fold_bytes`` (a first load's smaller budget, mirror.LOAD_FOLD_BYTES) chunks the presence fold: one byte
    aggregates a day per statement, the default a short history's days in one; the state is the same."""
    events = facts([view(f"u{n}", T + timedelta(days=n, hours=n), "p1", source=f"s{n % 2}") for n in range(5)])
    states, chunks = [], []
    for fold_bytes in (1, None):
        with duck_of(events) as duck:
            counting = _Counting(duck)
            fold_state(counting, len(events), fold_bytes=fold_bytes)
            chunks.append(counting.chunks)
            states.append([duck.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
                           for table in ("presence", "source_presence", "source_viewers")])
    days = len(kpi_state.day_starts(epoch_micros(T), epoch_micros(T + timedelta(days=4, hours=4)), "UTC")) - 1
    assert days >= 5 and chunks == [days, 1]
    assert states[0] == states[1] and states[0][0]
