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
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from libs.common.settings import KafkaSettings  # noqa: E402


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
    funnel: common.Process | None = None
    ingest: common.Process | None = None

    def _log(self, name: str) -> Path:
        return self.workdir / f"{name}-{self.database}-{self.run}.log"

    async def start_funnel(self) -> common.Process:
        if self.funnel is None:
            self.funnel = common.Process.service("funnel", self.kafka, self._log("funnel"), self.database_url)
            self.exits.callback(self.funnel.stop)
            await self.funnel.wait_ready(self.client)
        return self.funnel

    async def start_ingest(self) -> common.Process:
        if self.ingest is None:
            url = f"sqlite+aiosqlite:///{self.workdir}/ingest-{self.database}-{self.run}.db"
            self.ingest = common.Process.service("ingest", self.kafka, self._log("ingest"), url, workers="1")
            self.exits.callback(self.ingest.stop)
            await self.ingest.wait_ready(self.client)
        return self.ingest


@asynccontextmanager
async def stack(database: str, run: int, args: argparse.Namespace, workdir: Path,
                records: list[tuple[bytes, bytes]]) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        kafka = await exits.enter_async_context(common.kafka_broker(workdir / f"tansu-{database}-{run}.log"))
        url = await exits.enter_async_context(common.new_database(database, workdir, f"funnel-{run}"))
        client = await exits.enter_async_context(httpx.AsyncClient(timeout=60))
        yield Stack(database, run, args, workdir, records, client, kafka, url, exits)


# ---------------------------------------------------------------------------------------------- consumer

async def consumer_phase(stack: Stack, rows: common.Rows) -> None:
    """N events already on the topic; the service's rate from its first applied batch to the last."""
    if stack.funnel is not None:
        raise SystemExit("the consumer phase must come first (it needs the backlog before the service starts)")
    total = len(stack.records)
    await common.publish(stack.kafka, stack.records)
    service = await stack.start_funnel()
    client = stack.client
    profile = stack.args.py_spy and stack.workdir / f"consumer-{stack.database}-{stack.run}.txt"
    spy = common.py_spy(service.popen.pid, profile, 120)
    first, started = 0, time.perf_counter()
    deadline = started + 900
    cpu_start: dict[int, float] = {}
    while True:
        done = await common.consumed(client, service.base_url, "funnel")
        now = time.perf_counter()
        if first == 0 and done:
            first, started = done, now
            cpu_start = await common.service_cpu(service.popen.pid, stack.database_url)
        if done >= total:
            break
        if now > deadline:
            raise SystemExit(f"the funnel applied {done:,} of {total:,} events in 15 minutes; see {service.log}")
        await asyncio.sleep(0.1)  # /metrics costs the service about a millisecond
    elapsed = time.perf_counter() - started
    cpu_end = await common.service_cpu(service.popen.pid, stack.database_url)
    common.stop_profile(spy)
    stored = await common.count_rows(stack.database_url, "events")
    if stored != stored_count(stack.records):
        raise SystemExit(f"{stored:,} events stored, expected {stored_count(stack.records):,}")
    rate = (total - first) / elapsed
    rows.add(f"consumer throughput, {total:,} events already on the topic (events/s)", stack.database, rate,
             f"{rate:,.0f}", ">= 20,000 events/s")
    # CPU per event, less sensitive than the rate to other work on the machine: the service process (all its
    # threads, SQLite's included) and, on PostgreSQL, the server processes serving its database.
    common.ConsumerCost.between(total - first, cpu_start, cpu_end, service.popen.pid, elapsed).add_to(
        rows, stack.database, "consumer")


def stored_count(records: list[tuple[bytes, bytes]]) -> int:
    """How many rows of `events` the records make (identify calls carry no behaviour and are not stored)."""
    return sum(b'"type":"identify"' not in value for _, value in records)


# ---------------------------------------------------------------------------------------------- freshness

PROBE_EPOCH = datetime(2001, 1, 1, tzinfo=UTC)
STORED = text("SELECT 1 FROM events WHERE event_id = :event_id")


async def freshness_phase(stack: Stack, rows: common.Rows) -> None:
    """Probes through ingest under a steady background load; ack -> first /v1/kpis that counts the probe."""
    args, client = stack.args, stack.client
    service = await stack.start_funnel()
    ingest = await stack.start_ingest()
    bodies = common.ingest_bodies(10_000_000 * (stack.run + 1), int(args.freshness_seconds * 10) + 1,
                           max(args.background_rate // 10, 1), datetime.now(UTC), args.persons)
    latencies: list[float] = []
    stored_latencies: list[float] = []
    missed = 0
    database = create_async_engine(stack.database_url)
    stop_at = time.perf_counter() + args.freshness_seconds

    async def probe(k: int) -> None:
        nonlocal missed
        day = PROBE_EPOCH + timedelta(days=k + 400 * stack.run)
        event = {"event_id": f"probe-{stack.database}-{stack.run}-{k}", "type": "view",
                 "user_id": f"probe-{uuid.uuid4().hex}", "occurred_at": (day + timedelta(hours=12)).isoformat(),
                 "product": {"product_id": "sku-probe"}}
        params = {"from": day.date().isoformat(), "to": (day + timedelta(days=1)).date().isoformat()}
        response = await client.post(f"{ingest.base_url}/v1/events", json=event, headers=common.INGEST)
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
            answer = await client.get(f"{service.base_url}/v1/kpis", params=params, headers=common.READ)
            if answer.status_code != 200:
                raise SystemExit(f"/v1/kpis answered {answer.status_code}: {answer.text[:500]}")
            if answer.json()["uv"] == 1:
                latencies.append(time.perf_counter() - acked)
                await watcher
                return
            await asyncio.sleep(args.poll_seconds)
        watcher.cancel()
        missed += 1

    profile = args.py_spy and stack.workdir / f"freshness-{stack.database}-{stack.run}.txt"
    spy = common.py_spy(service.popen.pid, profile, args.freshness_seconds)
    began = time.perf_counter()
    try:
        sent, _ = await asyncio.gather(common.steady_load(client, ingest.base_url, bodies, stop_at),
                                       common.probe_at_rate(probe, args.probes_per_second, stop_at))
    finally:
        await database.dispose()
    common.stop_profile(spy)
    rate = sent / (time.perf_counter() - began)
    if not latencies:
        raise SystemExit("no probe became visible within 30 s")
    p50, p95, p99 = (common.percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    target = f"p95 < 1 s at {args.background_rate:,} events/s"
    rows.add("freshness: ingest 200 -> counted in GET /v1/kpis, p50 / p95 / p99 (ms)", stack.database, p95,
             f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f}", target)
    p50, p95, p99 = (common.percentile(stored_latencies, q) for q in (0.5, 0.95, 0.99))
    rows.add("freshness, of which ingest 200 -> stored in the service's database, p50 / p95 / p99 (ms)",
             stack.database, p95, f"{p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f}", "")
    rows.add("freshness: probes (not visible within 30 s), background events/s achieved", stack.database, rate,
             f"{len(latencies)} ({missed}), {rate:,.0f}", "")


# ---------------------------------------------------------------------------------------------- main

Phase = Callable[[Stack, common.Rows], Awaitable[None]]
PHASES: dict[str, Phase] = {"consumer": consumer_phase, "freshness": freshness_phase}


async def run_all(args: argparse.Namespace, phases: list[Phase], workdir: Path, rows: common.Rows) -> None:
    records = common.published_records(args.events, datetime.now(UTC), args.persons)
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
    rows = common.Rows()
    began = time.perf_counter()
    asyncio.run(run_all(args, phases, workdir, rows))

    common.print_table(f"shoploop funnel benchmark — {os.cpu_count()} cores, tansu broker, PostgreSQL local, "
                f"{time.perf_counter() - began:.0f} s in all (logs: {workdir})",
                ("measurement", "SQLite", "PostgreSQL", "target"), rows.table())


if __name__ == "__main__":
    main()
