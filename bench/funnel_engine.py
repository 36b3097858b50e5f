"""Timing of the DuckDB funnel engine (services/funnel/engine/funnels.py) on a synthetic copy. Not a test.

Fills an in-memory DuckDB copy (the tables of services/funnel/adapters/mirror.py) with N events of P persons
over D days, generated in SQL: each person's events cluster around a moment of their own (so that chains
exist), 50% views, 20% add_to_cart, 8% inquiries, 12% orders (some refunded, some completed twice, some
without a total) and 10% reviews; 10,000 products in 40 categories, 6 sources. Then times funnels over the
last 30 days (the Python reference would need ~30 µs per event, ~100 s here). Rows are stored in time order,
as the copy holds them (it appends in the database's write order, and events arrive about as they happen), so
DuckDB's zone maps skip most of the history in time-bounded scans.

With ``--verify`` each answer is also computed by the Python reference (services/funnel/domain/funnels.py)
on the same facts and compared: only for small sizes (e.g. ``--events 200000 --persons 20000 --verify``).

Run: ``python bench/funnel_engine.py`` (about a minute on 2 cores); ``--help`` for sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.events import epoch_micros  # noqa: E402
from services.funnel.adapters.facts import _EVENT_COLUMNS, _fact  # noqa: E402
from services.funnel.adapters.mirror import create_tables  # noqa: E402
from services.funnel.domain.facts import FunnelEvent, OrderItem  # noqa: E402
from services.funnel.domain.funnels import FunnelDefinition, FunnelStep, funnel_result  # noqa: E402
from services.funnel.engine.funnels import funnel_result_sql  # noqa: E402

FIRST = datetime(2026, 1, 1, tzinfo=UTC)

_EVENTS = """
INSERT INTO events
SELECT
    'e' || lpad(i::VARCHAR, 10, '0') AS event_id,
    CASE WHEN r < 0.50 THEN 'view' WHEN r < 0.70 THEN 'add_to_cart' WHEN r < 0.78 THEN 'inquiry'
         WHEN r < 0.90 THEN 'order' ELSE 'review' END AS type,
    'u' || person AS person_key,
    -- around the person's own moment: most of a person's events lie within a few days of each other
    $first + ((hash(person) % ($days * 86400)) * 1000000)::BIGINT
        + (random() * random() * 6 * 86400 * 1000000)::BIGINT AS occurred_us,
    CASE WHEN r2 < 0.4 THEN '(direct)' WHEN r2 < 0.6 THEN 'google' WHEN r2 < 0.75 THEN 'douyin'
         WHEN r2 < 0.85 THEN 'newsletter' WHEN r2 < 0.95 THEN 'xiaohongshu' ELSE 'bing' END AS source,
    CASE WHEN r < 0.78 OR r >= 0.90 THEN 'sku' || product END AS product_id,
    NULL AS product_name,
    CASE WHEN r < 0.50 AND r2 < 0.8 THEN 'c' || (product % 40) END AS category,
    CASE WHEN r < 0.50 THEN 1000 + product END AS price_cents,
    NULL AS declared_tier,
    1 AS quantity,
    CASE WHEN r >= 0.70 AND r < 0.78 THEN 'q' || i END AS inquiry_id,
    NULL AS response_seconds,
    CASE WHEN r >= 0.78 AND r < 0.90 THEN 'o' || CASE WHEN r3 < 0.05 THEN i - 1 ELSE i END END AS order_id,
    CASE WHEN r >= 0.78 AND r < 0.90 THEN CASE WHEN r3 >= 0.95 THEN 'refunded' ELSE 'completed' END END
        AS order_status,
    CASE WHEN r >= 0.78 AND r < 0.90 AND r3 < 0.8 THEN 1000 + product END AS total_cents,
    NULL AS discount_cents, NULL AS coupon_code, NULL AS refund_cents,
    CASE WHEN r >= 0.90 THEN 1 + (product % 5) END AS rating,
    1 AS applied,  -- one batch
    hash('u' || person) AS ph  -- the person's number, as the copy computes it (person_hashes.py)
FROM (
    SELECT i, random() AS r, random() AS r2, random() AS r3, (random() * $persons)::BIGINT AS person,
           (random() * 10000)::BIGINT AS product
    FROM range($n) t(i)
)
-- The copy follows the database in write order, which is about time order (events arrive as they happen).
ORDER BY occurred_us
"""

_ITEMS = """
INSERT INTO order_items
SELECT event_id, line, CASE WHEN line = 0 THEN product_id0 ELSE 'sku' || ((hash(event_id) % 10000)) END,
       CASE WHEN line = 1 THEN 'c' || (hash(event_id) % 40) END, 1 + line, 1000 + line * 250, 1
FROM (SELECT event_id, 'sku' || (hash(event_id || 'p') % 10000) AS product_id0, (hash(event_id) % 2)::INT AS two
      FROM events WHERE type = 'order') o, range(2) l(line)
WHERE line = 0 OR two = 1
"""


def fill(connection: duckdb.DuckDBPyConnection, count: int, persons: int, days: int) -> None:
    create_tables(connection)
    connection.execute("SELECT setseed(0.42)")
    connection.execute(_EVENTS, {"first": epoch_micros(FIRST), "days": days, "persons": persons, "n": count})
    connection.execute(_ITEMS)
    connection.execute("INSERT INTO order_events SELECT * FROM events WHERE order_status IS NOT NULL")


def facts_of(connection: duckdb.DuckDBPyConnection) -> list[FunnelEvent]:
    """The copy's facts as the Python path reads them (for --verify)."""
    lines: dict[str, list[tuple[int, OrderItem]]] = {}
    for event_id, line, product_id, category, quantity, unit_price_cents in connection.execute(
        "SELECT event_id, line, product_id, category, quantity, unit_price_cents FROM order_items"
    ).fetchall():
        lines.setdefault(event_id, []).append(
            (line, OrderItem(product_id, category, quantity, Decimal(unit_price_cents).scaleb(-2))))
    columns = ", ".join(column.name for column in _EVENT_COLUMNS)
    return [
        _fact(row, [item for _, item in sorted(lines.get(row[0], ()), key=lambda pair: pair[0])])
        for row in connection.execute(f"SELECT {columns} FROM events").fetchall()
    ]


def timed(connection: duckdb.DuckDBPyConnection, definition: FunnelDefinition, start: datetime, end: datetime,
          as_of: datetime, breakdown: str | None, repeat: int) -> tuple[list[float], list[float], object]:
    """Wall and CPU seconds (the process's, DuckDB's threads included) of each run, after one warm-up."""
    seconds, cpu = [], []
    result = None
    for run in range(repeat + 1):
        cursor = connection.cursor()
        began, began_cpu = time.perf_counter(), time.process_time()
        result = funnel_result_sql(cursor, definition, start, end, as_of, breakdown)
        if run:
            seconds.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
        cursor.close()
    return seconds, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per funnel (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--verify", action="store_true", help="compare every answer with the Python reference")
    arguments = parser.parse_args()

    connection = duckdb.connect(":memory:", config={"threads": arguments.threads})
    began = time.perf_counter()
    fill(connection, arguments.events, arguments.persons, arguments.days)
    print(f"filled {arguments.events:,} events in {time.perf_counter() - began:.1f} s")
    end = FIRST + timedelta(days=arguments.days)
    start = end - timedelta(days=30)
    as_of = end + timedelta(days=1)
    in_range = connection.execute(
        "SELECT count(*) FROM events WHERE occurred_us >= ? AND occurred_us < ?",
        [epoch_micros(start), epoch_micros(end)],
    ).fetchone()[0]
    print(f"{in_range:,} events in the 30-day range")
    reference = facts_of(connection) if arguments.verify else None

    four = (FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("inquiry"), FunnelStep("order"))
    cases = [
        ("4 steps, person", FunnelDefinition("bench", four), None, as_of),
        ("4 steps, person, breakdown=source", FunnelDefinition("bench", four), "source", as_of),
        ("4 steps, person, breakdown=category", FunnelDefinition("bench", four), "category", as_of),
        ("4 steps, person, as_of inside the range", FunnelDefinition("bench", four), None,
         start + timedelta(days=20)),
        ("4 steps, product", FunnelDefinition("bench", four, unit="product"), None, as_of),
        ("default (view, cart, order), person", FunnelDefinition(
            "default", (FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("order"))), None, as_of),
        ("view[category] -> inquiry -> order[source], person", FunnelDefinition("bench", (
            FunnelStep("view", category="c7"), FunnelStep("inquiry"), FunnelStep("order", source="google"))),
         "category", as_of),
    ]
    print("| funnel over 30 days | median s | p95 s | max s | median CPU s | counts |")
    print("|---|---|---|---|---|---|")
    for label, definition, breakdown, moment in cases:
        seconds, cpu, result = timed(connection, definition, start, end, moment, breakdown, arguments.repeat)
        seconds.sort()
        p95 = seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]
        verdict = ""
        if reference is not None:
            same = result == funnel_result(definition, reference, start, end, moment, breakdown)
            verdict = " equal to the reference |" if same else " DIFFERS from the reference |"
        print(f"| {label} | {statistics.median(seconds):.3f} | {p95:.3f} | {seconds[-1]:.3f} | "
              f"{statistics.median(cpu):.3f} | {list(result.counts) if result else None} |{verdict}")


if __name__ == "__main__":
    main()
