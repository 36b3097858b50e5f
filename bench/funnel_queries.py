"""Funnel query latency at scale (issue 3), side by side with DuckDB over the same events in Parquet.

A PostgreSQL funnel database is seeded with bulk SQL (not through Kafka, which the consumer phase of
bench/funnel.py measures) with ``--events`` events (default 10,000,000) of ``--persons`` persons (default
1,000,000) spread over ``--days`` days (default 90) in arrival order, as a shop's history is. Then
``python -m services.funnel`` is started on it, as ``make run`` starts it, and timed:

- its start-up: until /readyz reports the DuckDB copy of the facts loaded (kept in a file under a temporary
  ``FACT_COPY_DIR``, as deployed), and its resident memory then;
- GET /v1/kpis over the last 30 days (range, and granularity=day), GET /v1/funnels/{id}/result of a 4-step
  person funnel view -> add_to_cart -> inquiry -> order and of a per-product funnel view -> add_to_cart ->
  order over the same 30 days, GET /v1/products (the first page of 100, and a walk of every page of 1,000),
  GET /v1/products/matrix (first page) and GET /v1/channels, each ``--runs`` times after one warm-up: p50
  and p95 of the HTTP round trip;
- its resident memory after those (and its peak), the peak while each route ran (the first load's too), then a
  restart (SIGTERM, start again on the same file)
  until /readyz, and the resident memory then;
- the KPI and funnel questions asked of DuckDB directly over the events exported to Parquet (the same SQL the
  service runs, on ``read_parquet`` views; for the KPIs the plain form, without the copy's KPI state), in one
  process, no HTTP.

Run alone: ``python bench/funnel_queries.py`` (about 5 minutes on 2 cores at the default size).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.segmentation import Process, temporary_postgres  # noqa: E402
from libs.common.broker import EmbeddedBroker, client_env, free_port  # noqa: E402
from libs.common.db import Database  # noqa: E402
from libs.common.events import epoch_micros  # noqa: E402
from services.funnel.adapters.mirror import EVENTS_SCHEMA, ITEMS_SCHEMA  # noqa: E402
from services.funnel.adapters.tables import MIGRATIONS, metadata  # noqa: E402
from services.funnel.domain.funnels import FunnelDefinition, FunnelStep  # noqa: E402
from services.funnel.engine.kpis import kpis as engine_kpis  # noqa: E402

Row = tuple[str, str, str, str]
HEADERS = {"Authorization": "Bearer dev-read-key"}
CAMPAIGNS = {"Authorization": "Bearer dev-campaigns-key"}  # defining a funnel needs the campaigns scope
END = datetime(2026, 11, 1, tzinfo=UTC)
STEPS = ("view", "add_to_cart", "inquiry", "order")
FUNNEL = FunnelDefinition("bench 4-step", tuple(FunnelStep(step) for step in STEPS), window_seconds=7 * 86400)
PRODUCT_STEPS = ("view", "add_to_cart", "order")

# Event kinds by g % 100: 0-7 completed order (one in 500 repeats the previous order_id), 8 refund of the
# order 105 events earlier (amount left out one time in two), 9-13 inquiry, 14-19 review, 20-39 cart, 40-99 view.
_SEED = """
INSERT INTO events (event_id, type, person_key, occurred_us, source, product_id, product_name, category,
                    price_cents, declared_tier, quantity, inquiry_id, response_seconds, order_id, order_status,
                    total_cents, discount_cents, coupon_code, refund_cents, rating, seq, revised)
SELECT 'e-' || g, kind, 'u-' || person, $3::bigint + g * $4::bigint + (hashint % 60000000),
       (ARRAY['(direct)', '(direct)', 'google', 'douyin', 'xiaohongshu', 'wechat', 'email'])[1 + hashint % 7],
       CASE WHEN kind <> 'order' THEN 'p-' || product END,
       CASE WHEN kind = 'view' THEN 'Product ' || product END,
       CASE WHEN kind = 'view' THEN 'c-' || (product % 40) END,
       CASE WHEN kind = 'view' THEN 100 + (product * 7919) % 50000 END,
       CASE WHEN kind = 'view' AND product % 50 = 0 THEN 'flagship' END,
       CASE WHEN kind = 'add_to_cart' THEN 1 + hashint % 3 ELSE 1 END,
       CASE WHEN kind = 'inquiry' THEN 'q-' || g END,
       CASE WHEN kind = 'inquiry' THEN (hashint % 600)::float / 4 END,
       CASE WHEN g % 100 = 8 THEN 'o-' || (g - 105)
            WHEN kind = 'order' AND g % 100 = 7 AND (g / 100) % 5 = 0 THEN 'o-' || (g - 1)
            WHEN kind = 'order' THEN 'o-' || g END,
       CASE WHEN g % 100 = 8 THEN 'refunded' WHEN kind = 'order' THEN 'completed' END,
       CASE WHEN kind = 'order' AND g % 100 <> 8 THEN (1 + hashint % 3) * (100 + (product * 7919) % 50000) END,
       NULL, NULL,
       CASE WHEN g % 100 = 8 AND g % 2 = 0 THEN 500 END,
       CASE WHEN kind = 'review' THEN 1 + hashint % 5 END,
       g, false
FROM (
    SELECT g, abs(hashint8(g)) AS hashint,
           floor(power(random(), 1.5) * $5)::int AS person,
           floor(power(random(), 3) * 20000)::int AS product,
           CASE WHEN g % 100 < 9 THEN 'order' WHEN g % 100 < 14 THEN 'inquiry' WHEN g % 100 < 20 THEN 'review'
                WHEN g % 100 < 40 THEN 'add_to_cart' ELSE 'view' END AS kind
    FROM generate_series($1::bigint, $2::bigint) AS g
) AS s
"""
_ITEMS = """
INSERT INTO order_items (event_id, line, product_id, category, quantity, unit_price_cents)
SELECT event_id, 0, 'p-' || (abs(hashint8(seq)) % 20000), 'c-' || (abs(hashint8(seq)) % 20000 % 40),
       1 + abs(hashint8(seq)) % 3, total_cents / (1 + abs(hashint8(seq)) % 3)
FROM events WHERE order_status = 'completed'
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


async def seed(url: str, events: int, persons: int, days: int) -> None:
    """Create the funnel's schema and fill it with bulk SQL, secondary indexes built after the rows."""
    database = Database(url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    await database.close()
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('events', 'order_items') "
            "AND indexname NOT LIKE '%pkey'")
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        start_us = epoch_micros(END - timedelta(days=days))
        step_us = days * 86_400_000_000 // events
        chunk = 1_000_000
        for first in range(1, events + 1, chunk):
            await connection.execute(_SEED, first, min(events, first + chunk - 1), start_us, step_us, persons)
            print(f"  seeded {min(events, first + chunk - 1):,} events", file=sys.stderr)
        await connection.execute(_ITEMS)
        for index in indexes:
            await connection.execute(index["indexdef"])
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


async def export_parquet(url: str, directory: Path) -> dict[str, Path]:
    """The same rows as Parquet files (through CSV, as the service's copy loads them)."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    paths: dict[str, Path] = {}
    try:
        for name, schema in (("events", EVENTS_SCHEMA), ("order_items", ITEMS_SCHEMA)):
            csv = directory / f"{name}.csv"
            columns = ", ".join(field.name for field in schema)
            await connection.copy_from_query(f"SELECT {columns} FROM {name}", output=str(csv), format="csv")
            paths[name] = directory / f"{name}.parquet"
            types = {field.name: str(field.type).replace("int64", "BIGINT").replace("int32", "INTEGER")
                     .replace("double", "DOUBLE").replace("string", "VARCHAR").replace("bool", "BOOLEAN")
                     for field in schema}
            duckdb.execute(
                f"COPY (SELECT * FROM read_csv(?, columns = ?, header = false, allow_quoted_nulls = false, "
                f"nullstr = '')) TO '{paths[name]}' (FORMAT parquet)", [str(csv), types])
            csv.unlink()
    finally:
        await connection.close()
    return paths


def resident_megabytes(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory (Linux /proc; ``VmHWM`` for its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def peak_of(pid: int, peaks: dict[str, tuple[float, float]], name: str) -> Iterator[None]:
    """The process's peak resident memory (VmHWM) while the block runs, and its resident memory after, kept in
    ``peaks[name]``: the peak is reset first (``/proc/<pid>/clear_refs``, Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    yield
    peaks[name] = (resident_megabytes(pid, "VmHWM"), resident_megabytes(pid))


async def walk_products(client: httpx.AsyncClient, url: str, params: dict[str, str]) -> tuple[float, list[float], int]:
    """Every page of /v1/products at 1,000 a page: total seconds, seconds per page, products seen."""
    pages: list[float] = []
    seen, cursor = 0, None
    began = time.perf_counter()
    while True:
        page_began = time.perf_counter()
        response = await client.get(url, params=params | {"limit": "1000"} | ({"cursor": cursor} if cursor else {}))
        response.raise_for_status()
        pages.append(time.perf_counter() - page_began)
        body = response.json()
        seen += len(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return time.perf_counter() - began, pages, seen


def timed(call: Any, runs: int) -> list[float]:
    call()  # warm-up
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return seconds


async def timed_http(client: httpx.AsyncClient, url: str, runs: int, params: dict[str, str]) -> list[float]:
    response = await client.get(url, params=params)
    response.raise_for_status()
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        (await client.get(url, params=params)).raise_for_status()
        seconds.append(time.perf_counter() - began)
    return seconds


def summary(seconds: list[float]) -> str:
    return f"p50 {statistics.median(seconds) * 1000:,.0f} ms, p95 {percentile(seconds, 0.95) * 1000:,.0f} ms"


async def query_latency(args: argparse.Namespace, workdir: Path, rows: list[Row]) -> None:
    size = f"{args.events:,} events, {args.persons:,} persons, {args.days} days"
    started = time.perf_counter()
    async with temporary_postgres("shoploop_bench_funnel") as url:
        await seed(url, args.events, args.persons, args.days)
        print(f"seeded {size} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        broker = EmbeddedBroker(log_path=workdir / "tansu-queries.log")
        broker.start()
        await broker.wait_ready()
        port = free_port()
        # The broker's address and consumer sessions, as `make run` gives them (libs/common/broker.client_env).
        env = client_env(broker.kafka_settings()) | {
            "SHOPLOOP_FUNNEL__PORT": str(port), "SHOPLOOP_FUNNEL__DATABASE_URL": url, "SHOPLOOP_LOG_LEVEL": "WARNING",
            "SHOPLOOP_FUNNEL__FACT_COPY_DIR": str(workdir / "funnel-copy")}
        began = time.perf_counter()
        service = Process("services.funnel", env, port, workdir / "funnel-queries.log")
        span = {"from": (END - timedelta(days=30)).date().isoformat(), "to": END.date().isoformat(),
                "as_of": "2026-11-01T00:00:00Z"}
        try:
            async with httpx.AsyncClient(timeout=600, headers=HEADERS) as client:
                await service.wait_ready(client, deadline_seconds=1200)
                loaded = time.perf_counter() - began
                pid = service.popen.pid
                peaks = {"first load": (resident_megabytes(pid, "VmHWM"), resident_megabytes(pid))}
                rows.append((f"funnel start-up until its DuckDB copy is loaded ({size})", "",
                             f"{loaded:.1f} s, then {resident_megabytes(pid):,.0f} MB resident", ""))
                base = service.base_url
                with peak_of(pid, peaks, "kpis"):
                    kpis = await timed_http(client, f"{base}/v1/kpis", args.runs, span)
                with peak_of(pid, peaks, "kpis per day"):
                    daily = await timed_http(client, f"{base}/v1/kpis", args.runs, span | {"granularity": "day"})
                figures = (await client.get(f"{base}/v1/kpis", params=span)).json()
                print("kpis: " + ", ".join(f"{k}={figures[k]}" for k in ("pv", "uv", "buyers", "orders", "gmv",
                                                                       "refunds", "inquiry_conversion")),
                      file=sys.stderr)
                funnel: list[float] = []
                if "funnel" in args.queries:
                    body = {"name": FUNNEL.name, "window_seconds": FUNNEL.window_seconds,
                            "steps": [{"type": step} for step in STEPS]}
                    created = await client.post(f"{base}/v1/funnels", json=body, headers=CAMPAIGNS)
                    created.raise_for_status()
                    funnel_url = f"{base}/v1/funnels/{created.json()['funnel_id']}/result"
                    with peak_of(pid, peaks, "4-step funnel"):
                        funnel = await timed_http(client, funnel_url, args.runs, span)
                if "products" in args.queries:
                    body = {"name": "bench per product", "window_seconds": 7 * 86400, "unit": "product",
                            "steps": [{"type": step} for step in PRODUCT_STEPS]}
                    created = await client.post(f"{base}/v1/funnels", json=body, headers=CAMPAIGNS)
                    created.raise_for_status()
                    with peak_of(pid, peaks, "per-product funnel"):
                        per_product = await timed_http(
                            client, f"{base}/v1/funnels/{created.json()['funnel_id']}/result", args.runs, span)
                    rows.append((f"GET per-product 3-step funnel result, 30 days ({size})", "", summary(per_product),
                                 "p95 < 1 s"))
                    with peak_of(pid, peaks, "products, first page"):
                        first_page = await timed_http(client, f"{base}/v1/products", args.runs, span | {"limit": "100"})
                    rows.append((f"GET /v1/products, first page of 100, 30 days ({size})", "", summary(first_page),
                                 "p95 < 1 s"))
                    with peak_of(pid, peaks, "products, every page"):
                        walked, pages, seen = await walk_products(client, f"{base}/v1/products", span)
                    rows.append((f"GET /v1/products, every page of 1,000 ({seen:,} products, {len(pages)} pages)", "",
                                 f"{walked:.1f} s in all; per page {summary(pages)}", "p95 < 1 s"))
                    with peak_of(pid, peaks, "matrix"):
                        matrix = await timed_http(client, f"{base}/v1/products/matrix", args.runs,
                                                  {"as_of": span["as_of"], "limit": "100"})
                    rows.append((f"GET /v1/products/matrix, first page of 100 ({size})", "", summary(matrix),
                                 "p95 < 1 s"))
                    with peak_of(pid, peaks, "channels"):
                        channels = await timed_http(client, f"{base}/v1/channels", args.runs, span)
                    rows.append((f"GET /v1/channels, 30 days ({size})", "", summary(channels), "p95 < 1 s"))
                rows.append(("funnel resident memory after the queries (highest peak)", "",
                             f"{resident_megabytes(pid):,.0f} MB ({max(high for high, _ in peaks.values()):,.0f} MB)",
                             "< 1 GB"))
                rows.append(("funnel peak resident memory per route (then resident)", "", "; ".join(
                    f"{name} {high:,.0f} MB ({after:,.0f})" for name, (high, after) in peaks.items()), "< 1 GB"))
                service.stop()
                began = time.perf_counter()
                service = Process("services.funnel", env, port, workdir / "funnel-restart.log")
                await service.wait_ready(client, deadline_seconds=1200)
                rows.append((f"funnel restart until ready, on its kept copy ({size})", "",
                             f"{time.perf_counter() - began:.1f} s, then "
                             f"{resident_megabytes(service.popen.pid):,.0f} MB resident", "< 10 s"))
                copy_bytes = sum(path.stat().st_size for path in (workdir / "funnel-copy").rglob("*") if path.is_file())
                rows.append(("the copy's files on disk", "", f"{copy_bytes / 1e6:,.0f} MB", ""))
        finally:
            service.stop()
            broker.stop()
        rows.append((f"GET /v1/kpis, 30 days ({size})", "", summary(kpis), "p95 < 300 ms, 3x DuckDB over Parquet"))
        rows.append((f"GET /v1/kpis?granularity=day, 30 days ({size})", "", summary(daily), ""))
        if funnel:
            rows.append((f"GET 4-step funnel result, 30 days ({size})", "", summary(funnel),
                         "p95 < 300 ms, 3x DuckDB over Parquet"))

        for row in rows:
            print(" | ".join(row), file=sys.stderr)
        paths = await export_parquet(url, workdir)
    megabytes = sum(path.stat().st_size for path in paths.values()) / 1e6
    with duckdb.connect(config={"threads": 2}) as connection:
        for name, path in paths.items():
            connection.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
        # The service's copy keeps the order events apart as well; here they are filtered from the raw file.
        connection.execute("CREATE VIEW order_events AS SELECT * FROM events WHERE order_status IS NOT NULL")
        start_at, end_at = END - timedelta(days=30), END
        # The plain SQL over the rows (kept=False): Parquet files have no KPI state.
        kpis = timed(lambda: engine_kpis(connection.cursor(), start_at, end_at, END, None, kept=False), args.runs)
        daily = timed(lambda: engine_kpis(connection.cursor(), start_at, end_at, END, "UTC", kept=False), args.runs)
        rows.append((f"DuckDB over Parquet ({megabytes:,.0f} MB): the /v1/kpis query", "", summary(kpis), ""))
        rows.append(("DuckDB over Parquet: the granularity=day query", "", summary(daily), ""))
        try:
            from services.funnel.engine.funnels import funnel_result_sql
        except ImportError:
            return
        if "funnel" not in args.queries:
            return
        # Without the copy's stored person numbers (kept=False): units numbered by a hash computed and checked here.
        funnel = timed(lambda: funnel_result_sql(connection.cursor(), FUNNEL, start_at, end_at, END, None, kept=False),
                       args.runs)
        rows.append(("DuckDB over Parquet: the 4-step funnel query", "", summary(funnel), ""))


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=10_000_000, help="stored events (query phase)")
    parser.add_argument("--persons", type=int, default=1_000_000, help="persons (query phase)")
    parser.add_argument("--days", type=int, default=90, help="days of history the events span (query phase)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query")
    parser.add_argument("--queries", default="kpis,funnel,products",
                        help="which routes to time besides kpis (funnel; products: products, matrix, channels and "
                             "a per-product funnel)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments(parser)
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="shoploop-bench-funnel-") as directory:
        await query_latency(args, Path(directory), rows)
    print("| measurement | SQLite | PostgreSQL | target |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    asyncio.run(main())
