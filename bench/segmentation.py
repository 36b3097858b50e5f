"""Segmentation service benchmark (issue 4); prints a markdown table. Not a test.

  a. consumer throughput: N realistic events are published to a fresh tansu broker, then the service
     is started as ``python -m services.segmentation`` (as ``make run`` starts it) and timed from its
     first applied batch until it has applied all N; once on SQLite, once on PostgreSQL (a temporary
     database, dropped afterwards). Also: how long after that its membership evaluation caught up.
  b. freshness: with the ingest service in front and a steady background load, each probe event's time
     from ingest's 200 (broker-acknowledged) to the first GET /v1/customers/{id} that shows it.
  c. one million customers on PostgreSQL, facts seeded with bulk SQL (not through Kafka, to keep the
     bench short): RFM and lifecycle report, one profile, and the scheduler's full membership
     re-evaluation (first one, and the steady-state one a day later).

Run: ``python bench/segmentation.py`` (about 10 minutes on 2 cores); ``--help`` for sizes and phases.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.broker import EmbeddedBroker, free_port  # noqa: E402
from libs.common.events import Event, epoch_micros  # noqa: E402
from libs.common.kafka import ALL_TOPICS, EVENTS_TOPIC, Publisher, ensure_topics  # noqa: E402
from libs.common.settings import CommonSettings, KafkaSettings  # noqa: E402

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
READ = {"Authorization": "Bearer dev-read-key"}
INGEST = {"Authorization": "Bearer dev-ingest-key"}
DAY_US = 86_400_000_000
Row = tuple[str, str, str, str]


class Rows(list[Row]):
    """The table's rows; each is also shown on stderr as soon as it is measured."""

    def append(self, row: Row) -> None:
        print(" | ".join(row), file=sys.stderr, flush=True)
        super().append(row)


# ---------------------------------------------------------------------------------------------- events

def make_event(i: int, now: datetime, persons: int) -> dict[str, Any]:
    """A realistic mix over 400 days: views, carts, inquiries, reviews, identify calls, orders, refunds."""
    person = f"u-{(i * 7919) % persons}"
    when = now - timedelta(seconds=(i * 104_729) % (400 * 86_400))
    source = (None, "douyin", "xiaohongshu", "google", "wechat")[i % 5]
    product = {"product_id": f"sku-{i % 2000}", "name": f"真丝连衣裙 {i % 2000}", "category": f"cat-{i % 40}",
               "price": "399.00"}
    base: dict[str, Any] = {"event_id": f"e-{i}", "user_id": person, "occurred_at": when, "received_at": now,
                            "session_id": f"s-{i % 90_000}"}
    if source:
        base["channel"] = {"source": source, "medium": "cpc", "campaign": "may"}
    kind = i % 100
    if kind < 55:
        return base | {"type": "view", "product": product}
    if kind < 72:
        return base | {"type": "add_to_cart", "product": product, "quantity": 1 + i % 3}
    if kind < 78:
        return base | {"type": "inquiry", "inquiry": {"inquiry_id": f"q-{i}", "topic": "尺码"}}
    if kind < 82:
        return base | {"type": "review", "product": product, "review": {"rating": 1 + i % 5}}
    if kind < 84:
        return base | {"type": "identify", "traits": {"city": ("杭州", "上海", "深圳")[i % 3], "vip": i % 7 == 0}}
    if kind < 98:
        total = f"{99 + (i * 37) % 4900}.{i % 100:02d}"
        return base | {"type": "order", "order": {
            "order_id": f"o-{i}", "status": "completed", "total": total,
            "items": [{"product_id": product["product_id"], "quantity": 1, "unit_price": total}]}}
    return base | {"type": "order", "order": {"order_id": f"o-{i - 3}", "status": "refunded"}}


def published_records(count: int, now: datetime, persons: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` as ingest publishes them: validated, keyed by person key."""
    records = []
    for i in range(count):
        event = Event.model_validate(make_event(i, now, persons))
        records.append((event.person_key.encode(), event.to_json()))
    return records


async def publish(kafka: KafkaSettings, records: list[tuple[bytes, bytes]]) -> None:
    publisher = Publisher(kafka, client_id="bench")
    await publisher.start()
    try:
        for start in range(0, len(records), 20_000):
            await publisher.publish_many(EVENTS_TOPIC, records[start:start + 20_000], wait_seconds=60)
    finally:
        await publisher.stop()


# ---------------------------------------------------------------------------------------------- helpers

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@asynccontextmanager
async def temporary_postgres(prefix: str) -> AsyncIterator[str]:
    """The URL of a new PostgreSQL database (created by the service on start), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Process:
    """A service started as ``python -m services.<name>`` with environment settings."""

    def __init__(self, module: str, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = log
        self.popen = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=dict(os.environ) | env,
                                      stdout=subprocess.DEVNULL, stderr=open(log, "wb"))

    async def wait_ready(self, client: httpx.AsyncClient, deadline_seconds: float = 90.0) -> None:
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.log.stem} exited; see {self.log}")
            with suppress(httpx.TransportError):
                if (await client.get(f"{self.base_url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
        raise SystemExit(f"{self.log.stem} not ready in {deadline_seconds}s; see {self.log}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def segmentation_env(kafka: str, port: int, database_url: str) -> dict[str, str]:
    return {"SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka, "SHOPLOOP_SEGMENTATION__PORT": str(port),
            "SHOPLOOP_SEGMENTATION__DATABASE_URL": database_url, "SHOPLOOP_LOG_LEVEL": "WARNING"}


_CONSUMED = re.compile(r'^shoploop_events_consumed_total\{consumer="segmentation"\} (\S+)$', re.M)


async def consumed(client: httpx.AsyncClient, base_url: str) -> int:
    match = _CONSUMED.search((await client.get(f"{base_url}/metrics")).text)
    return int(float(match.group(1))) if match else 0


_PENDING = re.compile(r'^shoploop_segment_pending_persons (\S+)$', re.M)


async def pending_persons(client: httpx.AsyncClient, base_url: str) -> int:
    """Persons with new facts the membership scheduler has not evaluated yet."""
    match = _PENDING.search((await client.get(f"{base_url}/metrics")).text)
    return int(float(match.group(1))) if match else 0


async def queued_changes(database_url: str) -> int:
    """Segment change records waiting in the outbox."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text("SELECT count(*) FROM segment_changes"))).scalar_one()
    finally:
        await engine.dispose()


def py_spy(pid: int, out: Path | bool | None, seconds: float) -> subprocess.Popen[bytes] | None:
    """Record a profile of ``pid`` into ``out``; nothing when profiles were not asked for (``out`` falsy)."""
    if not out:
        return None
    beside = Path(sys.executable).parent / "py-spy"
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--py-spy needs py-spy in the virtualenv or on PATH (pip install py-spy)")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                             "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None and spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(timeout=60)


# ---------------------------------------------------------------------------------------------- a + b

async def throughput_and_freshness(database: str, records: list[tuple[bytes, bytes]], args: argparse.Namespace,
                                   workdir: Path, rows: list[Row]) -> None:
    broker = EmbeddedBroker(log_path=workdir / f"tansu-{database}.log")
    broker.start()
    await broker.wait_ready()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    try:
        await ensure_topics(kafka, ALL_TOPICS)
        await publish(kafka, records)
        if database == "sqlite":
            async with _sqlite(workdir) as url:
                await _run_service(database, url, kafka, len(records), args, workdir, rows)
        else:
            async with temporary_postgres("shoploop_bench") as url:
                await _run_service(database, url, kafka, len(records), args, workdir, rows)
    finally:
        broker.stop()


@asynccontextmanager
async def _sqlite(workdir: Path) -> AsyncIterator[str]:
    yield f"sqlite+aiosqlite:///{workdir / 'segmentation.db'}"


async def _run_service(database: str, url: str, kafka: KafkaSettings, total: int, args: argparse.Namespace,
                       workdir: Path, rows: list[Row]) -> None:
    port = free_port()
    service = Process("services.segmentation", segmentation_env(kafka.bootstrap_servers, port, url), port,
                      workdir / f"segmentation-{database}.log")
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            profile = args.py_spy and workdir / f"throughput-{database}.folded.txt"
            await service.wait_ready(client)
            spy = py_spy(service.popen.pid, profile, 120)
            started = time.perf_counter()
            first = 0
            while True:
                done = await consumed(client, service.base_url)
                if first == 0 and done:
                    first, started = done, time.perf_counter()
                if done >= total:
                    break
                await asyncio.sleep(0.25)  # /metrics costs the service a few ms
            elapsed = time.perf_counter() - started
            rate = (total - first) / elapsed
            # Membership has caught up once no person waits for evaluation and every change is published.
            caught_up = time.perf_counter()
            while (settled := await pending_persons(client, service.base_url) == 0
                   and await queued_changes(url) == 0) is False:
                if time.perf_counter() - caught_up > 300:
                    break
                await asyncio.sleep(0.1)
            membership = time.perf_counter() - caught_up
            stop_profile(spy)
            target = "met" if rate >= 20_000 else "not met"
            rows.append((f"(a) consumer throughput, {database}, {total:,} events already on the topic",
                         f"{rate:,.0f} events/s ({elapsed:.1f} s); membership caught up "
                         f"{membership:.1f} s later{'' if settled else ' (not yet)'}",
                         ">= 20,000 events/s", target))
            if args.freshness_seconds > 0:
                await _freshness(database, service, kafka, args, workdir, rows, client)
    finally:
        service.stop()


async def _freshness(database: str, service: Process, kafka: KafkaSettings, args: argparse.Namespace,
                     workdir: Path, rows: list[Row], client: httpx.AsyncClient) -> None:
    port = free_port()
    ingest = Process("services.ingest", {
        "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SHOPLOOP_INGEST__PORT": str(port),
        "SHOPLOOP_INGEST__WORKERS": "1", "SHOPLOOP_INGEST__DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/ingest.db",
        "SHOPLOOP_LOG_LEVEL": "WARNING"}, port, workdir / f"ingest-{database}.log")
    try:
        await ingest.wait_ready(client)
        stop_at = time.perf_counter() + args.freshness_seconds
        latencies: list[float] = []
        background_sent = 0
        now = datetime.now(UTC)

        async def background() -> None:
            nonlocal background_sent
            i = 10_000_000
            per_tick = max(args.background_rate // 10, 1)
            next_tick = time.perf_counter()
            while time.perf_counter() < stop_at:
                # identify calls come through /v1/identify, not the native route: leave them out here.
                batch = [event for event in (make_event(i + k, now, args.persons) for k in range(per_tick))
                         if event.pop("received_at") and event["type"] != "identify"]
                i += per_tick
                response = await client.post(f"{ingest.base_url}/v1/events", content=orjson.dumps({"events": batch}),
                                             headers=INGEST | {"Content-Type": "application/json"})
                assert response.status_code == 200, response.text
                background_sent += len(batch)
                next_tick += 0.1
                await asyncio.sleep(max(next_tick - time.perf_counter(), 0))

        async def probe(k: int) -> None:
            person = f"probe-{database}-{k}"
            event = {"event_id": f"probe-{database}-{k}", "type": "order", "user_id": person,
                     "occurred_at": datetime.now(UTC).isoformat(),
                     "order": {"order_id": f"po-{database}-{k}", "status": "completed", "total": 199.0,
                               "items": [{"product_id": "sku-1", "quantity": 1, "unit_price": 199.0}]}}
            response = await client.post(f"{ingest.base_url}/v1/events", json=event, headers=INGEST)
            acked = time.perf_counter()
            assert response.status_code == 200, response.text
            while time.perf_counter() - acked < 30:
                answer = await client.get(f"{service.base_url}/v1/customers/{person}", headers=READ)
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - acked)
                    return
                await asyncio.sleep(args.poll_seconds)

        async def probes() -> None:
            tasks, k = [], 0
            while time.perf_counter() < stop_at:
                tasks.append(asyncio.create_task(probe(k)))
                k += 1
                await asyncio.sleep(1 / args.probes_per_second)
            await asyncio.gather(*tasks)

        profile = args.py_spy and workdir / f"freshness-{database}.folded.txt"
        spy = py_spy(service.popen.pid, profile, args.freshness_seconds)
        await asyncio.gather(background(), probes())
        stop_profile(spy)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        rows.append((f"(b) freshness, {database}: ingest 200 -> visible in GET /v1/customers/{{id}}",
                     f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
                     f"({len(latencies)} probes, {args.background_rate:,} background events/s)",
                     "p95 < 1 s", "met" if p95 < 1 else "not met"))
    finally:
        ingest.stop()


# ---------------------------------------------------------------------------------------------- c

async def seed_customers(url: str, customers: int, as_of: datetime) -> tuple[int, int]:
    """Facts for ``customers`` persons straight into the tables: 80% buyers (1-4 orders over 600 days),
    every person one view; deterministic. Returns (order rows, event rows)."""
    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    as_of_us = epoch_micros(as_of)
    tables = ["profiles", "customer_events", "customer_orders", "counted_orders"]
    try:
        # Secondary indexes are dropped while loading and built again after: same schema, a third of the time.
        indexes = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY($1::text[]) AND indexname NOT LIKE "
            "'%pkey'", tables)
        for index in indexes:
            await connection.execute(f'DROP INDEX "{index["indexname"]}"')
        await connection.execute("""
            INSERT INTO customer_events (event_id, person_key, type, occurred_us)
            SELECT 'v-' || p, 'c-' || p, 'view', $2 - (p * 7919 % 400) * $3 - p % 86400 * 1000000
            FROM generate_series(0::bigint, $1 - 1) AS p""", customers, as_of_us, DAY_US)
        await connection.execute("""
            INSERT INTO customer_orders (event_id, person_key, order_id, status, occurred_us, total_cents)
            SELECT 'o-' || p || '-' || j, 'c-' || p, 'o-' || p || '-' || j, 'completed',
                   $2 - ((p * 104729 + j * 15485863) % 600) * $3 - (p + j) % 86400 * 1000000,
                   9900 + (p * 31 + j * 17) % 500000
            FROM generate_series(0::bigint, $1 - 1) AS p, generate_series(0, 3) AS j
            WHERE j < p % 5""", customers, as_of_us, DAY_US)
        await connection.execute("""
            INSERT INTO counted_orders (order_id, event_id, person_key, occurred_us, total_cents)
            SELECT order_id, event_id, person_key, occurred_us, total_cents FROM customer_orders""")
        await connection.execute("""
            INSERT INTO customer_events (event_id, person_key, type, occurred_us)
            SELECT event_id, person_key, 'order', occurred_us FROM customer_orders""")
        await connection.execute("""
            INSERT INTO profiles (person_key, first_seen_us, first_event_id, acquisition_source, last_seen_us,
                                  last_event_id)
            SELECT person_key, min(occurred_us), min(event_id),
                   (ARRAY['(direct)', 'douyin', 'xiaohongshu', 'google'])[1 + abs(hashtext(person_key)) % 4],
                   max(occurred_us), max(event_id)
            FROM customer_events GROUP BY person_key""")
        for index in indexes:
            await connection.execute(index["indexdef"])
        await connection.execute("VACUUM ANALYZE")
        orders = await connection.fetchval("SELECT count(*) FROM customer_orders")
        events = await connection.fetchval("SELECT count(*) FROM customer_events")
        return orders, events
    finally:
        await connection.close()


async def million_customers(args: argparse.Namespace, workdir: Path, rows: list[Row]) -> None:
    from services.segmentation.adapters.tables import segment_changes
    from services.segmentation.bootstrap import create_segmentation_app
    from services.segmentation.membership import sync_membership
    from services.segmentation.settings import SegmentationSettings

    broker = EmbeddedBroker(log_path=workdir / "tansu-million.log")
    broker.start()
    await broker.wait_ready()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    as_of = datetime(2026, 5, 1, tzinfo=UTC)
    clock_now = [as_of]
    try:
        await ensure_topics(kafka, ALL_TOPICS)
        async with temporary_postgres("shoploop_bench_million") as url:
            settings = SegmentationSettings(database_url=url, common=CommonSettings(kafka=kafka, log_level="WARNING"))
            app = create_segmentation_app(settings, clock=lambda: clock_now[0])
            service = app.state.service
            await service.database.start()
            await service.publisher.start()
            try:
                started = time.perf_counter()
                orders, events = await seed_customers(url, args.customers, as_of)
                seeded = time.perf_counter() - started
                print(f"seeded {args.customers:,} customers ({orders:,} orders, {events:,} events) in {seeded:.0f} s",
                      file=sys.stderr)
                # As the service's lifespan does (not run here): what is loaded stays out of collections.
                gc.collect()
                gc.freeze()
                gc.set_threshold(50_000, 20, 50)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://segmentation",
                                             timeout=600) as client:
                    async def timed(path: str) -> float:
                        begun = time.perf_counter()
                        response = await client.get(path, headers=READ)
                        assert response.status_code == 200, response.text
                        return time.perf_counter() - begun

                    rfm = await timed("/v1/rfm")
                    lifecycle = await timed("/v1/lifecycle")
                    chosen = random.Random(4).sample(range(args.customers), 5)
                    profile = statistics.median([await timed(f"/v1/customers/c-{i}") for i in chosen])
                    rows.append((f"(c) GET /v1/rfm, {args.customers:,} customers, PostgreSQL", f"{rfm:.2f} s", "", ""))
                    rows.append((f"(c) GET /v1/lifecycle, {args.customers:,} customers, PostgreSQL",
                                 f"{lifecycle:.2f} s", "", ""))
                    rows.append((f"(c) GET /v1/customers/{{id}} among {args.customers:,}, PostgreSQL",
                                 f"{profile * 1000:.0f} ms (median of 5)", "", ""))

                spy = py_spy(os.getpid(), args.py_spy and workdir / "million.folded.txt", 600)
                # First evaluation: everyone enters their segments. Its records are dropped, not published
                # (publishing millions of first-time entries is a one-off, not what this measures).
                begun = time.perf_counter()
                async with service.database.begin() as connection:
                    evaluated, queued = await sync_membership(connection, as_of, service.thresholds)
                first = time.perf_counter() - begun
                async with service.database.begin() as connection:
                    await connection.execute(segment_changes.delete())
                rows.append((f"(c) first full membership evaluation, {evaluated:,} customers, PostgreSQL",
                             f"{first:.1f} s ({queued:,} entries queued)", "", ""))

                # The scheduler's rounds of everyone (changes published). Its first round in a process looks at
                # every customer (as do one an hour and the fallbacks, sync_membership); this one is a day later.
                clock_now[0] = as_of + timedelta(days=1)
                begun = time.perf_counter()
                published = await service.scheduler.run_once(full=True)
                steady = time.perf_counter() - begun
                rows.append((f"(c) full RFM/lifecycle re-evaluation, {evaluated:,} customers, PostgreSQL "
                             "(scheduler round a day later looking at every customer, changes published)",
                             f"{steady:.1f} s ({published:,} changes)", "< 10 s", "met" if steady < 10 else "not met"))
                # Its next round, one interval later, looks only at the customers who can have changed.
                interval = timedelta(seconds=settings.membership.evaluation_interval_seconds)
                clock_now[0] += interval
                begun = time.perf_counter()
                published = await service.scheduler.run_once(full=True)
                following = time.perf_counter() - begun
                stop_profile(spy)
                rows.append((f"(c) the scheduler's next round, {interval.total_seconds():.0f} s later (customers who "
                             "can have changed since the last)", f"{following:.2f} s ({published:,} changes)",
                             "< 10 s", "met" if following < 10 else "not met"))
            finally:
                await service.publisher.stop()
                await service.database.close()
    finally:
        broker.stop()


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events for the throughput phase")
    parser.add_argument("--persons", type=int, default=40_000, help="distinct persons in those events")
    parser.add_argument("--freshness-seconds", type=float, default=30.0, help="0 skips the freshness phase")
    parser.add_argument("--background-rate", type=int, default=1000, help="events/s during freshness")
    parser.add_argument("--probes-per-second", type=float, default=2.0)
    parser.add_argument("--poll-seconds", type=float, default=0.05, help="probe's GET interval")
    parser.add_argument("--customers", type=int, default=1_000_000, help="0 skips the re-evaluation phase")
    parser.add_argument("--databases", default="sqlite,postgresql", help="for throughput and freshness")
    parser.add_argument("--py-spy", action="store_true", help="record py-spy profiles (folded stacks) next to the logs")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="shoploop-bench-segmentation-"))
    rows = Rows()
    began = time.perf_counter()
    if args.events > 0:
        records = published_records(args.events, datetime.now(UTC), args.persons)
        for database in filter(None, args.databases.split(",")):
            asyncio.run(throughput_and_freshness(database, records, args, workdir, rows))
    if args.customers > 0:
        asyncio.run(million_customers(args, workdir, rows))

    print(f"\nshoploop segmentation benchmark — {os.cpu_count()} cores, tansu broker, PostgreSQL 15 local, "
          f"{time.perf_counter() - began:.0f} s in all (logs and profiles: {workdir})\n")
    print("| measurement | result | target | |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
