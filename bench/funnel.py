"""Funnel service benchmark (issue 3); prints a markdown table. Not a test.

Phases (``--phases``, in this order; each runs once per database and per ``--repeat``):
  consumer   N realistic events are published to a fresh tansu broker, then the service is started as
             ``python -m services.funnel`` (as ``make run`` starts it) and timed from its first applied batch
             until it has applied all N (its /metrics counter). Target >= 20,000 events/s.
  freshness  with the ingest service in front and a steady background load (default 5,000 events/s), each
             probe's time from ingest's 200 (broker-acknowledged) to the first GET /v1/kpis that reflects it.
             A probe is a view by a new person on a day of its own in 2001 (no background event is that old),
             so the probe is visible once that day's uv is 1. Target p95 < 1 s.

Each database gets its own broker and a new database (a SQLite file; a temporary PostgreSQL database, dropped
afterwards); the phases of one run share them, so freshness is measured on top of the consumer phase's events.
Results go into ``rows``, (measurement, SQLite, PostgreSQL, target), printed as a markdown table at the end;
with ``--repeat`` > 1 a cell shows the range of the runs.

Run: ``python bench/funnel.py`` (about 3 minutes on 2 cores); ``--help`` for sizes and phases.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.broker import EmbeddedBroker, free_port  # noqa: E402
from libs.common.events import Event  # noqa: E402
from libs.common.kafka import ALL_TOPICS, EVENTS_TOPIC, Publisher, ensure_topics  # noqa: E402
from libs.common.settings import KafkaSettings  # noqa: E402

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
READ = {"Authorization": "Bearer dev-read-key"}
INGEST = {"Authorization": "Bearer dev-ingest-key"}
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


# ---------------------------------------------------------------------------------------------- results

@dataclass
class Rows:
    """Measured values per (measurement, database); ``table()`` gives the (measurement, SQLite, PostgreSQL,
    target) rows, a cell being the range over the runs."""

    order: list[str] = field(default_factory=list)
    targets: dict[str, str] = field(default_factory=dict)
    values: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)

    def add(self, measurement: str, database: str, value: float, text: str, target: str = "") -> None:
        """One run's result: ``value`` orders the runs (the cell shows the lowest and highest), ``text`` shows it."""
        if measurement not in self.targets:
            self.order.append(measurement)
            self.targets[measurement] = target
        self.values.setdefault((measurement, database), []).append((value, text))
        print(f"{measurement} | {DATABASES[database]} | {text}", file=sys.stderr, flush=True)

    def cell(self, measurement: str, database: str) -> str:
        runs = sorted(self.values.get((measurement, database), []), key=lambda run: run[0])
        if not runs:
            return ""
        if len(runs) == 1:
            return runs[0][1]
        return f"{runs[0][1]} – {runs[-1][1]} ({len(runs)} runs)"

    def table(self) -> list[tuple[str, str, str, str]]:
        return [(m, self.cell(m, "sqlite"), self.cell(m, "postgresql"), self.targets[m]) for m in self.order]


# ---------------------------------------------------------------------------------------------- events

def make_event(i: int, now: datetime, persons: int) -> dict[str, Any]:
    """A realistic mix over 400 days: views, carts, inquiries, reviews, identify calls, orders, refunds."""
    person = f"u-{(i * 7919) % persons}"
    when = now - timedelta(seconds=(i * 104_729) % (400 * 86_400))
    source = (None, "douyin", "xiaohongshu", "google", "wechat")[i % 5]
    product = {"product_id": f"sku-{i % 2000}", "name": f"真丝连衣裙 {i % 2000}", "category": f"cat-{i % 40}",
               "price": "399.00"}
    if i % 7 == 0:
        product["tier"] = ("flagship", "引流款", "profit")[i % 3]
    base: dict[str, Any] = {"event_id": f"e-{i}", "user_id": person, "occurred_at": when.isoformat(),
                            "session_id": f"s-{i % 90_000}"}
    if source:
        base["channel"] = {"source": source, "medium": "cpc", "campaign": "may"}
    kind = i % 100
    if kind < 55:
        return base | {"type": "view", "product": product}
    if kind < 72:
        return base | {"type": "add_to_cart", "product": product, "quantity": 1 + i % 3}
    if kind < 78:
        return base | {"type": "inquiry", "product": product,
                       "inquiry": {"inquiry_id": f"q-{i}", "topic": "尺码", "response_seconds": 5 + i % 300}}
    if kind < 82:
        return base | {"type": "review", "product": product, "review": {"rating": 1 + i % 5}}
    if kind < 84:
        return base | {"type": "identify", "traits": {"city": ("杭州", "上海", "深圳")[i % 3], "vip": i % 7 == 0}}
    if kind < 98:
        lines = [{"product_id": f"sku-{(i + line) % 2000}", "category": f"cat-{(i + line) % 40}", "quantity": 1,
                  "unit_price": f"{99 + (i * 37 + line) % 400}.{i % 100:02d}"} for line in range(1 + i % 3)]
        total = sum(float(line["unit_price"]) for line in lines)
        return base | {"type": "order", "order": {
            "order_id": f"o-{i}", "status": "completed", "total": f"{total:.2f}", "items": lines,
            **({"coupon_code": "MAY10", "discount": "10.00"} if i % 4 == 0 else {})}}
    return base | {"type": "order", "order": {"order_id": f"o-{i - 3}", "status": "refunded", "refund_amount": "99.00"}}


def published_records(count: int, now: datetime, persons: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` as ingest publishes them: validated, keyed by person key."""
    records = []
    for i in range(count):
        event = Event.model_validate(make_event(i, now, persons) | {"received_at": now.isoformat()})
        records.append((event.person_key.encode(), event.to_json()))
    return records


def stored_count(records: list[tuple[bytes, bytes]]) -> int:
    """How many rows of `events` the records make (identify calls carry no behaviour and are not stored)."""
    return sum(b'"type":"identify"' not in value for _, value in records)


async def publish(kafka: KafkaSettings, records: list[tuple[bytes, bytes]]) -> None:
    publisher = Publisher(kafka, client_id="bench")
    await publisher.start()
    try:
        for start in range(0, len(records), 20_000):
            await publisher.publish_many(EVENTS_TOPIC, records[start:start + 20_000], wait_seconds=60)
    finally:
        await publisher.stop()


# ---------------------------------------------------------------------------------------------- processes

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


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


_CONSUMED = re.compile(r'^shoploop_events_consumed_total\{consumer="funnel"\} (\S+)$', re.M)


async def consumed(client: httpx.AsyncClient, base_url: str) -> int:
    """Records the funnel's events consumer has applied (its /metrics counter)."""
    match = _CONSUMED.search((await client.get(f"{base_url}/metrics")).text)
    return int(float(match.group(1))) if match else 0


def py_spy(pid: int, out: Path | None, seconds: float) -> subprocess.Popen[bytes] | None:
    if not out:
        return None
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("--py-spy needs py-spy on PATH or beside the interpreter (pip install py-spy)")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
                             "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "wb"))


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None and spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(timeout=60)


@asynccontextmanager
async def new_database(database: str, workdir: Path, run: int) -> AsyncIterator[str]:
    """The URL of a new, empty database: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if database == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / f'funnel-{run}.db'}"
        return
    name = f"shoploop_bench_funnel_{uuid.uuid4().hex[:10]}"
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"  # the service creates it on start
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class Stack:
    """One run on one database: a broker, a new database, and the services, started when a phase asks."""

    database: str
    run: int
    args: argparse.Namespace
    workdir: Path
    records: list[tuple[bytes, bytes]]
    client: httpx.AsyncClient
    kafka: KafkaSettings
    database_url: str
    exits: AsyncExitStack
    funnel: Process | None = None
    ingest: Process | None = None

    def _log(self, name: str) -> Path:
        return self.workdir / f"{name}-{self.database}-{self.run}.log"

    async def start_funnel(self) -> Process:
        if self.funnel is None:
            port = free_port()
            self.funnel = Process("services.funnel", {
                "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                "SHOPLOOP_FUNNEL__PORT": str(port), "SHOPLOOP_FUNNEL__DATABASE_URL": self.database_url,
                "SHOPLOOP_LOG_LEVEL": "WARNING"}, port, self._log("funnel"))
            self.exits.callback(self.funnel.stop)
            await self.funnel.wait_ready(self.client)
        return self.funnel

    async def start_ingest(self) -> Process:
        if self.ingest is None:
            port = free_port()
            self.ingest = Process("services.ingest", {
                "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers, "SHOPLOOP_INGEST__PORT": str(port),
                "SHOPLOOP_INGEST__WORKERS": "1",
                "SHOPLOOP_INGEST__DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir}/ingest-{self.run}.db",
                "SHOPLOOP_LOG_LEVEL": "WARNING"}, port, self._log("ingest"))
            self.exits.callback(self.ingest.stop)
            await self.ingest.wait_ready(self.client)
        return self.ingest


@asynccontextmanager
async def stack(database: str, run: int, args: argparse.Namespace, workdir: Path,
                records: list[tuple[bytes, bytes]]) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        broker = EmbeddedBroker(log_path=workdir / f"tansu-{database}-{run}.log")
        broker.start()
        exits.callback(broker.stop)
        await broker.wait_ready()
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        await ensure_topics(kafka, ALL_TOPICS)
        url = await exits.enter_async_context(new_database(database, workdir, run))
        client = await exits.enter_async_context(httpx.AsyncClient(timeout=60))
        yield Stack(database, run, args, workdir, records, client, kafka, url, exits)


# ---------------------------------------------------------------------------------------------- consumer

async def consumer_phase(stack: Stack, rows: Rows) -> None:
    """N events already on the topic; the service's rate from its first applied batch to the last."""
    if stack.funnel is not None:
        raise SystemExit("the consumer phase must come first (it needs the backlog before the service starts)")
    total = len(stack.records)
    await publish(stack.kafka, stack.records)
    service = await stack.start_funnel()
    client = stack.client
    spy = py_spy(service.popen.pid, stack.args.py_spy and stack.workdir / f"consumer-{stack.database}-{stack.run}.txt",
                 120)
    first, started = 0, time.perf_counter()
    deadline = started + 900
    cpu_start: dict[int, float] = {}
    while True:
        done = await consumed(client, service.base_url)
        now = time.perf_counter()
        if first == 0 and done:
            first, started = done, now
            cpu_start = await cpu_seconds(stack, service)
        if done >= total:
            break
        if now > deadline:
            raise SystemExit(f"the funnel applied {done:,} of {total:,} events in 15 minutes; see {service.log}")
        await asyncio.sleep(0.1)  # /metrics costs the service about a millisecond
    elapsed = time.perf_counter() - started
    cpu_end = await cpu_seconds(stack, service)
    stop_profile(spy)
    stored = await stored_events(stack.database_url)
    if stored != stored_count(stack.records):
        raise SystemExit(f"{stored:,} events stored, expected {stored_count(stack.records):,}")
    rate = (total - first) / elapsed
    rows.add(f"consumer throughput, {total:,} events already on the topic (events/s)", stack.database, rate,
             f"{rate:,.0f}", ">= 20,000 events/s")
    # CPU per event, less sensitive than the rate to other work on the machine: the service process (all its
    # threads, SQLite's included) and, on PostgreSQL, the server processes serving its database.
    spent = {pid: cpu_end[pid] - cpu_start.get(pid, 0.0) for pid in cpu_end}
    own = spent.pop(service.popen.pid, 0.0) / (total - first) * 1e6
    text = f"{own:.0f}" if stack.database == "sqlite" else f"{own:.0f} + {sum(spent.values()) / (total - first) * 1e6:.0f}"
    rows.add("consumer CPU per event (µs): service process [+ PostgreSQL server]", stack.database, own, text)


def _cpu_of(pid: int) -> float | None:
    """utime + stime of a process, all its threads (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_seconds(stack: Stack, service: Process) -> dict[int, float]:
    """CPU seconds so far of the service process and of the PostgreSQL backends connected to its database."""
    pids = [service.popen.pid]
    if stack.database == "postgresql":
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            name = stack.database_url.rsplit("/", 1)[1]
            pids += [row["pid"] for row in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1",
                                                              name)]
        finally:
            await admin.close()
    return {pid: cpu for pid in pids if (cpu := _cpu_of(pid)) is not None}


async def stored_events(database_url: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text("SELECT count(*) FROM events"))).scalar_one()
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------------------------- freshness

PROBE_EPOCH = datetime(2001, 1, 1, tzinfo=UTC)
STORED = text("SELECT 1 FROM events WHERE event_id = :event_id")


async def freshness_phase(stack: Stack, rows: Rows) -> None:
    """Probes through ingest under a steady background load; ack -> first /v1/kpis that counts the probe."""
    args, client = stack.args, stack.client
    service = await stack.start_funnel()
    ingest = await stack.start_ingest()
    # Background requests built beforehand, so the load generator costs little while measuring.
    per_tick = max(args.background_rate // 10, 1)
    ticks = int(args.freshness_seconds * 10) + 1
    now = datetime.now(UTC)
    offset = 10_000_000 * (stack.run + 1)
    bodies = []
    for tick in range(ticks):
        batch = [make_event(offset + tick * per_tick + k, now, args.persons) for k in range(per_tick)]
        # identify calls come through /v1/identify, not the native route: leave them out here.
        bodies.append(orjson.dumps({"events": [event for event in batch if event["type"] != "identify"]}))
    latencies: list[float] = []
    stored_latencies: list[float] = []
    missed = 0
    database = create_async_engine(stack.database_url)
    stop_at = time.perf_counter() + args.freshness_seconds
    headers = INGEST | {"Content-Type": "application/json"}
    sent = 0

    async def background() -> None:
        nonlocal sent
        next_tick = time.perf_counter()
        for body in bodies:
            if time.perf_counter() >= stop_at:
                break
            response = await client.post(f"{ingest.base_url}/v1/events", content=body, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"ingest answered {response.status_code}: {response.text[:500]}")
            sent += per_tick
            next_tick += 0.1
            await asyncio.sleep(max(next_tick - time.perf_counter(), 0))

    async def probe(k: int) -> None:
        nonlocal missed
        day = PROBE_EPOCH + timedelta(days=k + 400 * stack.run)
        event = {"event_id": f"probe-{stack.database}-{stack.run}-{k}", "type": "view",
                 "user_id": f"probe-{uuid.uuid4().hex}", "occurred_at": (day + timedelta(hours=12)).isoformat(),
                 "product": {"product_id": "sku-probe"}}
        params = {"from": day.date().isoformat(), "to": (day + timedelta(days=1)).date().isoformat()}
        response = await client.post(f"{ingest.base_url}/v1/events", json=event, headers=INGEST)
        acked = time.perf_counter()
        if response.status_code != 200:
            raise SystemExit(f"ingest answered {response.status_code} to a probe: {response.text[:500]}")

        async def stored() -> None:
            # The same probe seen in the service's own database: where the time goes, consumer or query side.
            while time.perf_counter() - acked < 30:
                async with database.connect() as connection:
                    found = (await connection.execute(STORED, {"event_id": event["event_id"]})).first()
                if found is not None:
                    stored_latencies.append(time.perf_counter() - acked)
                    return
                await asyncio.sleep(args.poll_seconds)

        watcher = asyncio.create_task(stored())
        while time.perf_counter() - acked < 30:
            answer = await client.get(f"{service.base_url}/v1/kpis", params=params, headers=READ)
            if answer.status_code != 200:
                raise SystemExit(f"/v1/kpis answered {answer.status_code}: {answer.text[:500]}")
            if answer.json()["uv"] == 1:
                latencies.append(time.perf_counter() - acked)
                await watcher
                return
            await asyncio.sleep(args.poll_seconds)
        watcher.cancel()
        missed += 1

    async def probes() -> None:
        tasks, k = [], 0
        while time.perf_counter() < stop_at:
            tasks.append(asyncio.create_task(probe(k)))
            k += 1
            await asyncio.sleep(1 / args.probes_per_second)
        await asyncio.gather(*tasks)

    spy = py_spy(service.popen.pid, args.py_spy and stack.workdir / f"freshness-{stack.database}-{stack.run}.txt",
                 args.freshness_seconds)
    began = time.perf_counter()
    try:
        await asyncio.gather(background(), probes())
    finally:
        await database.dispose()
    stop_profile(spy)
    rate = sent / (time.perf_counter() - began)
    if not latencies:
        raise SystemExit("no probe became visible within 30 s")
    p50, p95, p99 = (percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    target = f"p95 < 1 s at {args.background_rate:,} events/s"
    rows.add("freshness: ingest 200 -> counted in GET /v1/kpis, p50 / p95 / p99 (ms)", stack.database, p95,
             f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f}", target)
    p50, p95, p99 = (percentile(stored_latencies, q) for q in (0.5, 0.95, 0.99))
    rows.add("freshness, of which ingest 200 -> stored in the service's database, p50 / p95 / p99 (ms)",
             stack.database, p95, f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f}", "")
    rows.add("freshness: probes (not visible within 30 s), background events/s achieved", stack.database, rate,
             f"{len(latencies)} ({missed}), {rate:,.0f}", "")


# ---------------------------------------------------------------------------------------------- main

Phase = Callable[[Stack, Rows], Awaitable[None]]
PHASES: dict[str, Phase] = {"consumer": consumer_phase, "freshness": freshness_phase}


async def run_all(args: argparse.Namespace, phases: list[Phase], workdir: Path, rows: Rows) -> None:
    records = published_records(args.events, datetime.now(UTC), args.persons)
    for run in range(args.repeat):
        for database in filter(None, args.databases.split(",")):
            async with stack(database, run, args, workdir, records) as current:
                for phase in phases:
                    await phase(current, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="consumer,freshness", help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every phase on every database")
    parser.add_argument("--events", type=int, default=200_000, help="events for the consumer phase")
    parser.add_argument("--persons", type=int, default=40_000, help="distinct persons in the generated events")
    parser.add_argument("--freshness-seconds", type=float, default=30.0)
    parser.add_argument("--background-rate", type=int, default=5000, help="events/s through ingest during freshness")
    parser.add_argument("--probes-per-second", type=float, default=4.0)
    parser.add_argument("--poll-seconds", type=float, default=0.02, help="a probe's GET /v1/kpis interval")
    parser.add_argument("--py-spy", action="store_true", help="record py-spy profiles (raw stacks) next to the logs")
    args = parser.parse_args()
    names = [name for name in args.phases.split(",") if name]
    unknown = [name for name in names if name not in PHASES]
    if unknown:
        parser.error(f"unknown phases {unknown}; known: {', '.join(PHASES)}")
    phases = [PHASES[name] for name in PHASES if name in names]  # always in the documented order

    workdir = Path(tempfile.mkdtemp(prefix="shoploop-bench-funnel-"))
    rows = Rows()
    began = time.perf_counter()
    asyncio.run(run_all(args, phases, workdir, rows))

    print(f"\nshoploop funnel benchmark — {os.cpu_count()} cores, tansu broker, PostgreSQL local, "
          f"{time.perf_counter() - began:.0f} s in all (logs: {workdir})\n")
    print("| measurement | SQLite | PostgreSQL | target |")
    print("|---|---|---|---|")
    for row in rows.table():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
