"""Campaigns service benchmark (issue 11); prints a markdown table. Not a test.

  a. delivery: a segment_scheduled campaign over M mirrored segment members (seeded with bulk SQL), every
     touch signed and POSTed to a local receiver (a raw ASGI app answering 204, in its own uvicorn process);
     touches/s from activation until every touch is recorded delivered (in-process service on SQLite, the real
     scheduler, deliverer and shared HTTP session); prints the attempts made and the last errors seen.
  b. report: N assignments and N attributed orders seeded with bulk SQL on PostgreSQL (a temporary database,
     dropped afterwards), the running totals rebuilt from them, the last orders through the consumer's write
     path; p50/p95 of GET /v1/campaigns/{id}/report (now, and an earlier as_of) over repeated calls.

Run: ``python bench/campaigns.py`` (small sizes); the issue's sizes: ``--members 100000 --report-size 1000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.broker import EmbeddedBroker, free_port  # noqa: E402
from libs.common.db import BulkRows  # noqa: E402
from libs.common.events import PublishedEvent, epoch_micros, format_timestamp  # noqa: E402
from libs.common.settings import CommonSettings, KafkaSettings  # noqa: E402
from services.campaigns.adapters import report_state  # noqa: E402
from services.campaigns.adapters.orders import record_orders  # noqa: E402
from services.campaigns.adapters.tables import (  # noqa: E402
    assignments,
    counted_orders,
    segment_members,
    touches,
)
from services.campaigns.bootstrap import create_campaigns_app  # noqa: E402
from services.campaigns.settings import CampaignsSettings, SchedulerSettings, WebhookSettings  # noqa: E402

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
READ = {"Authorization": "Bearer dev-read-key"}
WRITE = {"Authorization": "Bearer dev-campaigns-key"}
CHUNK = 50_000


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fastest honest receiver: reads the body, answers 204."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@asynccontextmanager
async def serve(app: Any, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           loop="asyncio", http="httptools", lifespan="on"))
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"{url}/readyz")).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def temporary_postgres() -> AsyncIterator[str]:
    name = f"bench_campaigns_{uuid.uuid4().hex[:8]}"
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _settings(database_url: str, bootstrap: str) -> CampaignsSettings:
    common = CommonSettings(env="local", kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_partitions=4))
    return CampaignsSettings(database_url=database_url, common=common,
                             webhooks=WebhookSettings(concurrency=64, timeout_seconds=10),
                             scheduler=SchedulerSettings(poll_seconds=0.05, batch=2000))


async def seed(database: Any, table: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    bulk = BulkRows(table, columns)
    async with database.begin() as connection:
        dialect = connection.dialect.name
        for start in range(0, len(rows), CHUNK):
            await connection.execute(bulk.insert(dialect), bulk.params(dialect, rows[start:start + CHUNK]))


async def delivery(members: int, bootstrap: str) -> tuple[str, str, str, str]:
    with tempfile.TemporaryDirectory() as directory:
        app = create_campaigns_app(_settings(f"sqlite+aiosqlite:///{directory}/bench.db", bootstrap))
        service = app.state.service
        receiver_port = free_port()
        # The receiver in its own process (as a real one would be): the service does not share its CPU time.
        receiver = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"),  # noqa: ASYNC220
                                     "campaigns:receiver_app", "--port", str(receiver_port), "--no-access-log",
                                     "--log-level", "warning", "--http", "httptools"], cwd=ROOT)
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        async with serve(app, free_port()) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            for _ in range(600):  # the receiver answers before the campaign starts (no touch waits for a retry)
                try:
                    await client.get(receiver_url)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            now = datetime.now(UTC)
            await seed(service.database, segment_members, ("segment_id", "person_key", "entered_us"),
                        [("rfm:champion", f"m-{n}", epoch_micros(now - timedelta(hours=1))) for n in range(members)])
            created = (await client.post("/v1/campaigns", headers=WRITE, json={
                "name": "bench", "audience": {"kind": "segment_scheduled", "segment_id": "rfm:champion",
                                              "send_at": format_timestamp(now - timedelta(seconds=1))},
                "offer": {"kind": "coupon", "percent_off": 10}, "variants": [{"name": "a", "split_bp": 9000}],
                "holdout_bp": 1000, "webhook_url": f"{receiver_url}/hook"})).json()
            started = time.perf_counter()
            await client.post(f"/v1/campaigns/{created['campaign_id']}/activate", headers=WRITE)
            treated = None
            while True:
                async with service.database.read() as connection:
                    if treated is None or treated == 0:
                        treated = (await connection.execute(select(func.count()).select_from(touches))).scalar_one()
                    done = (await connection.execute(select(func.count()).select_from(touches)
                                                     .where(touches.c.status == "delivered"))).scalar_one()
                if treated and done >= treated:
                    break
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"after 600 s: {treated} touches, {done} delivered")
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
            async with service.database.read() as connection:
                attempts = (await connection.execute(select(func.sum(touches.c.attempts)))).scalar_one()
                errors = (await connection.execute(select(touches.c.last_error, func.count())
                                                   .group_by(touches.c.last_error))).all()
            print(f"attempts {attempts}, errors {errors}", file=sys.stderr)
        receiver.terminate()
        receiver.wait()
    rate = treated / elapsed
    return ("a. delivery (SQLite)", f"{members:,} members, {treated:,} touches", f"{rate:,.0f} touches/s",
            f"{elapsed:.1f} s from activation to the last delivery recorded; target >= 2,000/s")


async def timed_gets(client: httpx.AsyncClient, path: str, calls: int, **params: str) -> list[float]:
    """Seconds each of ``calls`` sequential reads of ``path`` took (each must answer 200), sorted."""
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        response = await client.get(path, headers=READ, params=params)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return sorted(timings)


def p95(timings: list[float]) -> float:
    return timings[min(len(timings) - 1, int(0.95 * len(timings)))]


async def report(size: int, streamed: int, bootstrap: str, calls: int) -> list[tuple[str, str, str, str]]:
    """N assignments with N attributed orders: all but ``streamed`` orders seeded with bulk SQL and the running
    totals rebuilt from them (what the migration does), the last ``streamed`` through the consumer's write path
    (stored, counted and the report shares refreshed, batches of 500)."""
    async with temporary_postgres() as database_url:
        app = create_campaigns_app(_settings(database_url, bootstrap))
        service = app.state.service
        async with serve(app, free_port()) as url, httpx.AsyncClient(base_url=url, timeout=600) as client:
            created = (await client.post("/v1/campaigns", headers=WRITE, json={
                "name": "bench report", "audience": {"kind": "segment_entered", "segment_id": "rfm:champion"},
                "offer": {"kind": "message"}, "variants": [{"name": "a", "split_bp": 8000}],
                "holdout_bp": 2000, "webhook_url": "http://127.0.0.1:9/hook"})).json()
            campaign_id = created["campaign_id"]
            assigned_at = datetime.now(UTC) - timedelta(days=3)
            base = epoch_micros(assigned_at)
            seeded = size - streamed
            await seed(service.database, assignments, ("campaign_id", "person_key", "variant", "assigned_us"),
                        [(campaign_id, f"p-{n}", "holdout" if n % 5 == 0 else "a", base) for n in range(size)])
            await seed(service.database, counted_orders,
                        ("order_id", "event_id", "person_key", "occurred_us", "total_cents"),
                        [(f"o-{n}", f"e-{n}", f"p-{n}", base + 3_600_000_000, 10_000 + n % 5000)
                         for n in range(seeded)])
            async with service.database.begin() as connection:
                await connection.execute(text("ANALYZE"))
            started = time.perf_counter()
            async with service.database.begin() as connection:
                await connection.run_sync(report_state.rebuild)
            rebuilt = time.perf_counter() - started
            started = time.perf_counter()
            for first in range(seeded, size, 500):
                events = [PublishedEvent.model_validate({
                    "event_id": f"e-{n}", "type": "order", "user_id": f"p-{n}", "person_key": f"p-{n}",
                    "occurred_at": format_timestamp(assigned_at + timedelta(hours=1)),
                    "order": {"order_id": f"o-{n}", "status": "completed", "total": f"{100 + n % 5000 / 100:.2f}",
                              "items": [{"product_id": "sku", "quantity": 1, "unit_price": "1.00"}]}})
                    for n in range(first, min(first + 500, size))]
                async with service.database.begin() as connection:
                    await record_orders(connection, events)
            consumed = time.perf_counter() - started
            path = f"/v1/campaigns/{campaign_id}/report"
            now = await timed_gets(client, path, calls)
            earlier = await timed_gets(client, path, max(3, calls // 10),
                                           as_of=format_timestamp(assigned_at + timedelta(minutes=30)))
            body = (await client.get(path, headers=READ)).json()
            assert sum(arm["assigned"] for arm in body["variants"].values()) == size, body
            assert sum(arm["conversions"] for arm in body["variants"].values()) == size, body
    sizes = f"{size:,} assignments, {size:,} attributed orders"
    return [
        ("b. report for now (PostgreSQL)", sizes, f"p95 {p95(now) * 1000:,.1f} ms",
         f"p50 {statistics.median(now) * 1000:,.1f} ms over {calls} calls; target p95 < 200 ms at 1,000,000"),
        ("b. report for an earlier as_of (PostgreSQL)", sizes, f"p95 {p95(earlier) * 1000:,.0f} ms",
         f"p50 {statistics.median(earlier) * 1000:,.0f} ms over {len(earlier)} calls: before the orders, so computed from the stored rows"),
        ("c. running totals rebuilt (PostgreSQL)", f"{size:,} assignments, {seeded:,} orders",
         f"{rebuilt:,.1f} s", "what migration 2 does once over an existing database"),
        ("c. orders through the consumer's write path (PostgreSQL)", f"{streamed:,} orders of assigned persons",
         f"{streamed / consumed:,.0f} orders/s", "stored, counted, and every share they change refreshed"),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--report-size", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--streamed", type=int, default=20_000, help="orders sent through the write path")
    parser.add_argument("--phases", default="ab")
    args = parser.parse_args()
    broker = EmbeddedBroker()
    broker.start()
    await broker.wait_ready()
    rows = []
    try:
        if "a" in args.phases:
            rows.append(await delivery(args.members, broker.bootstrap_servers))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        if "b" in args.phases:
            for row in await report(args.report_size, args.streamed, broker.bootstrap_servers, args.calls):
                rows.append(row)
                print(" | ".join(row), file=sys.stderr, flush=True)
    finally:
        broker.stop()
    print("| phase | size | result | notes |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    asyncio.run(main())
