"""The KPI query with and without the copy's KPI state (services/funnel/engine/kpi_state.py), in DuckDB alone. Not a
test.

Builds a DuckDB copy (the tables of services/funnel/adapters/mirror.py, in a file) with ``--events`` events of
``--persons`` persons over 90 days in the distribution of bench/funnel_queries.py (generated in DuckDB, no
PostgreSQL), folds it as the first load does, then times over the last 30 days (``--runs`` runs after a warm-up,
p50 and max): ``kpis`` with the state and the plain SQL (which DuckDB over other files of the rows runs), range
and per day; then appends ``--unfolded`` rows (copies of the newest, under new event and order ids, an hour
earlier) and times the range query with them not folded yet, the fold of them, and the query after it. Each pair
of answers is checked equal.

Run: ``python bench/funnel_kpi_state.py --events 1000000 --persons 100000`` (a minute), or at the default 10M
(about 5 minutes on 2 cores). ``--path`` keeps the built copy for a second run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.events import epoch_micros  # noqa: E402
from services.funnel.adapters.mirror import create_tables, fold_state  # noqa: E402
from services.funnel.engine.kpis import kpis  # noqa: E402

END = datetime(2026, 11, 1, tzinfo=UTC)

_EVENTS = """
INSERT INTO events
SELECT 'e-' || g, kind, 'u-' || person, $start + g * $step + (hi % 60000000),
       {source},
       CASE WHEN kind <> 'order' THEN 'p-' || product END,
       CASE WHEN kind = 'view' THEN 'Product ' || product END,
       CASE WHEN kind = 'view' THEN 'c-' || (product % 40) END,
       CASE WHEN kind = 'view' THEN 100 + (product * 7919) % 50000 END,
       NULL, CASE WHEN kind = 'add_to_cart' THEN 1 + hi % 3 ELSE 1 END,
       CASE WHEN kind = 'inquiry' THEN 'q-' || g END,
       CASE WHEN kind = 'inquiry' THEN (hi % 600)::DOUBLE / 4 END,
       CASE WHEN g % 100 = 8 THEN 'o-' || (g - 105)
            WHEN kind = 'order' AND g % 100 = 7 AND (g // 100) % 5 = 0 THEN 'o-' || (g - 1)
            WHEN kind = 'order' THEN 'o-' || g END,
       CASE WHEN g % 100 = 8 THEN 'refunded' WHEN kind = 'order' THEN 'completed' END,
       CASE WHEN kind = 'order' AND g % 100 <> 8 THEN (1 + hi % 3) * (100 + (product * 7919) % 50000) END,
       NULL, NULL, CASE WHEN g % 100 = 8 AND g % 2 = 0 THEN 500 END,
       CASE WHEN kind = 'review' THEN 1 + hi % 5 END, $events, hash('u-' || person)
FROM (SELECT g, (hash(g) % 1000000007)::BIGINT AS hi, floor(power(random(), 1.5) * $persons)::BIGINT AS person,
             floor(power(random(), 3) * 20000)::BIGINT AS product,
             CASE WHEN g % 100 < 9 THEN 'order' WHEN g % 100 < 14 THEN 'inquiry' WHEN g % 100 < 20 THEN 'review'
                  WHEN g % 100 < 40 THEN 'add_to_cart' ELSE 'view' END AS kind
      FROM range(1, $events + 1) t(g))
"""


# The bench's sources: two in seven events direct, the rest one of five sources (or of ``sources`` ``tail-<n>``).
_SIX_SOURCES = "(['(direct)', '(direct)', 'google', 'douyin', 'xiaohongshu', 'wechat', 'email'])[1 + hi % 7]"


def source_of(sources: int) -> str:
    """SQL: an event's source, ``hi`` its hash: the bench's six (with ``(direct)``), or a long tail of ``sources``."""
    if not sources:
        return _SIX_SOURCES
    return f"CASE WHEN hi % 7 < 2 THEN '(direct)' ELSE 'tail-' || (hi // 7) % {int(sources)} END"


def build(connection: duckdb.DuckDBPyConnection, events: int, persons: int, sources: int = 0) -> None:
    create_tables(connection, "UTC")
    began = time.perf_counter()
    connection.execute(_EVENTS.replace("{source}", source_of(sources)), {"start": epoch_micros(END - timedelta(days=90)), "step": 90 * 86_400_000_000 // events,
                                 "events": events, "persons": persons})
    connection.execute("INSERT INTO order_events SELECT * FROM events WHERE order_status IS NOT NULL")
    connection.execute("INSERT INTO order_items SELECT event_id, 0, 'p-' || (hash(event_id) % 20000), "
                       "'c-' || (hash(event_id) % 40), 1, total_cents, applied FROM events "
                       "WHERE order_status = 'completed'")
    print(f"built {events:,} events in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    began = time.perf_counter()
    connection.execute("BEGIN")
    fold_state(connection, events)
    connection.execute("COMMIT")
    connection.execute("CHECKPOINT")
    print(f"first fold (KPI and product state) {time.perf_counter() - began:.1f} s", file=sys.stderr)


def timed(call: Callable[[], object], runs: int) -> str:
    call()
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return f"p50 {statistics.median(seconds) * 1000:,.0f} ms, max {max(seconds) * 1000:,.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--unfolded", type=int, default=100_000, help="rows appended and left unfolded")
    parser.add_argument("--path", help="the copy's file (kept; reused when it exists)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoploop-kpi-state-") as directory:
        path = Path(args.path) if args.path else Path(directory, "copy.duckdb")
        existed = path.exists()
        with duckdb.connect(str(path), config={"threads": 2, "memory_limit": "512MB"}) as connection:
            if not existed:
                build(connection, args.events, args.persons)
        work = Path(directory, "work.duckdb")
        shutil.copy(path, work)
        connection = duckdb.connect(str(work), config={"threads": 2, "memory_limit": "512MB"})
        start = END - timedelta(days=30)

        def answer(kept: bool, zone: str | None = None) -> object:
            return kpis(connection.cursor(), start, END, END, zone, kept=kept)

        assert answer(True, "UTC") == answer(False, "UTC")
        rows = [("range, with the state", timed(lambda: answer(True), args.runs)),
                ("range, plain SQL", timed(lambda: answer(False), args.runs)),
                ("per day, with the state", timed(lambda: answer(True, "UTC"), args.runs)),
                ("per day, plain SQL", timed(lambda: answer(False, "UTC"), args.runs))]
        top = connection.execute("SELECT max(applied) FROM events").fetchone()[0]  # type: ignore[index]
        new = top + args.unfolded
        connection.execute("BEGIN")
        connection.execute(
            f"INSERT INTO events SELECT * REPLACE ('n-' || event_id AS event_id, {new} AS applied, "
            f"'n-' || order_id AS order_id, occurred_us - 3600000000 AS occurred_us) "
            f"FROM events WHERE applied <= {top} ORDER BY occurred_us DESC LIMIT {args.unfolded}")
        connection.execute(f"INSERT INTO order_events SELECT * FROM events WHERE applied = {new} "
                           "AND order_status IS NOT NULL")
        connection.execute(f"INSERT INTO order_items SELECT 'n-' || event_id, line, product_id, category, quantity, "
                           f"unit_price_cents, {new} FROM order_items WHERE 'n-' || event_id IN "
                           f"(SELECT event_id FROM events WHERE applied = {new})")
        connection.execute("COMMIT")
        unfolded = answer(True)
        assert unfolded == answer(False)
        rows.append((f"range, with the state and {args.unfolded:,} rows not folded", timed(lambda: answer(True), args.runs)))
        began = time.perf_counter()
        connection.execute("BEGIN")
        fold_state(connection, new)
        connection.execute("COMMIT")
        seconds = time.perf_counter() - began
        rows.append((f"fold of those {args.unfolded:,} rows", f"{seconds * 1000:,.0f} ms, "
                     f"{seconds / args.unfolded * 1e6:.1f} us per row"))
        assert answer(True) == unfolded
        rows.append(("range, with the state, after the fold", timed(lambda: answer(True), args.runs)))
        connection.close()
    print(f"| KPI query, 30 days of {args.events:,} events, DuckDB alone | |\n|---|---|")
    for name, figure in rows:
        print(f"| {name} | {figure} |")


if __name__ == "__main__":
    main()
