"""What the service benchmarks share: the event mix, a broker, new databases, services started as processes,
their /metrics, an ingest load with probes, py-spy profiles and the result table. Not a test.

A bench script puts the repository on ``sys.path`` before importing this module, so that it runs both as
``python bench/<name>.py`` (as ``make bench`` runs it) and imported as ``bench.<name>``; it imports the module,
not a list of its names (such lists would repeat from bench to bench), and calls ``common.publish(...)``::

    ROOT = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(ROOT))

    from bench import common  # noqa: E402

A consumer bench (bench/funnel.py, bench/segmentation.py): ``published_records`` -> ``kafka_broker`` ->
``publish`` -> ``new_database`` -> ``Process.service(...)`` and ``wait_ready`` -> poll ``consumed`` until all
are applied. A freshness phase adds ``Process.service("ingest", ...)``, ``ingest_bodies`` and ``steady_load``
for the background, ``probe_at_rate`` for the probes, and reports ``percentile``s. Results: ``Rows`` (one
column per database) or a list of rows, printed by ``print_table``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.broker import EmbeddedBroker, client_env, free_port, stop_process
from libs.common.events import Event
from libs.common.kafka import ALL_TOPICS, EVENTS_TOPIC, Publisher, ensure_topics
from libs.common.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The local PostgreSQL server's maintenance database (asyncpg DSN): creating and dropping bench databases."""
READ = {"Authorization": "Bearer dev-read-key"}
"""Headers of the development read key (``make run``'s settings): the services' GET routes."""
INGEST = {"Authorization": "Bearer dev-ingest-key"}
"""Headers of the development ingest key: ingest's POST routes."""
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
"""The ``--databases`` a bench accepts, with the names its table shows."""


# ---------------------------------------------------------------------------------------------- events

def make_event(i: int, now: datetime, persons: int, *, detail: bool = True) -> dict[str, Any]:
    """Event ``i`` (native ingest shape, ``occurred_at`` an ISO string) of a realistic mix over the 400 days
    before ``now``: views, carts, inquiries, reviews, identify calls, orders, refunds, by ``persons`` persons.

    The same ``i`` always gives the same event. With ``detail`` (the default) products sometimes declare a
    tier, inquiries name a product and a response time, orders have 1-3 lines with categories and some a
    coupon and discount, and refunds are partial (``refund_amount``). ``detail=False`` is the leaner mix
    bench/segmentation.py has always measured (one-line orders, inquiries without product, full refunds),
    kept so that its results stay comparable with docs/benchmarks.md.
    """
    person = f"u-{(i * 7919) % persons}"
    when = now - timedelta(seconds=(i * 104_729) % (400 * 86_400))
    source = (None, "douyin", "xiaohongshu", "google", "wechat")[i % 5]
    product = {"product_id": f"sku-{i % 2000}", "name": f"真丝连衣裙 {i % 2000}", "category": f"cat-{i % 40}",
               "price": "399.00"}
    if detail and i % 7 == 0:
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
        if not detail:
            return base | {"type": "inquiry", "inquiry": {"inquiry_id": f"q-{i}", "topic": "尺码"}}
        return base | {"type": "inquiry", "product": product,
                       "inquiry": {"inquiry_id": f"q-{i}", "topic": "尺码", "response_seconds": 5 + i % 300}}
    if kind < 82:
        return base | {"type": "review", "product": product, "review": {"rating": 1 + i % 5}}
    if kind < 84:
        return base | {"type": "identify", "traits": {"city": ("杭州", "上海", "深圳")[i % 3], "vip": i % 7 == 0}}
    if kind < 98:
        if not detail:
            total = f"{99 + (i * 37) % 4900}.{i % 100:02d}"
            return base | {"type": "order", "order": {
                "order_id": f"o-{i}", "status": "completed", "total": total,
                "items": [{"product_id": product["product_id"], "quantity": 1, "unit_price": total}]}}
        lines = [{"product_id": f"sku-{(i + line) % 2000}", "category": f"cat-{(i + line) % 40}", "quantity": 1,
                  "unit_price": f"{99 + (i * 37 + line) % 400}.{i % 100:02d}"} for line in range(1 + i % 3)]
        total = sum(float(line["unit_price"]) for line in lines)
        return base | {"type": "order", "order": {
            "order_id": f"o-{i}", "status": "completed", "total": f"{total:.2f}", "items": lines,
            **({"coupon_code": "MAY10", "discount": "10.00"} if i % 4 == 0 else {})}}
    refund = {"order_id": f"o-{i - 3}", "status": "refunded"}
    return base | {"type": "order", "order": refund | ({"refund_amount": "99.00"} if detail else {})}


def published_records(count: int, now: datetime, persons: int, *,
                      detail: bool = True) -> list[tuple[bytes, bytes]]:
    """Events ``0 .. count - 1`` of ``make_event`` as ingest publishes them: ``(key, value)``, validated,
    received at ``now``, keyed by person key."""
    records, received_at = [], now.isoformat()
    for i in range(count):
        fields = make_event(i, now, persons, detail=detail) | {"received_at": received_at}
        event = Event.model_validate(fields)
        records.append((event.person_key.encode(), event.to_json()))
    return records


async def publish(kafka: KafkaSettings, records: list[tuple[bytes, bytes]]) -> None:
    """``records`` onto the events topic, 20,000 at a time, each batch acknowledged before the next."""
    publisher = Publisher(kafka, client_id="bench")
    await publisher.start()
    try:
        for start in range(0, len(records), 20_000):
            await publisher.publish_many(EVENTS_TOPIC, records[start:start + 20_000], wait_seconds=60)
    finally:
        await publisher.stop()


@asynccontextmanager
async def kafka_broker(log_path: Path) -> AsyncIterator[KafkaSettings]:
    """A fresh tansu broker (its log at ``log_path``) with every topic created; stopped afterwards."""
    broker = EmbeddedBroker(log_path=log_path)
    broker.start()
    try:
        await broker.wait_ready()
        kafka = broker.kafka_settings()
        await ensure_topics(kafka, ALL_TOPICS)
        yield kafka
    finally:
        broker.stop()


# ---------------------------------------------------------------------------------------------- databases

@asynccontextmanager
async def temporary_postgres(prefix: str) -> AsyncIterator[str]:
    """The URL of a new PostgreSQL database named ``<prefix>_<random>`` (the service creates it on start),
    dropped afterwards. ``prefix``: lower-case letters, digits and ``_``."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def new_database(database: str, workdir: Path, name: str) -> AsyncIterator[str]:
    """The URL of a new, empty database of kind ``database`` (a key of ``DATABASES``): the SQLite file
    ``workdir/<name>.db``, or a temporary PostgreSQL database ``shoploop_bench_<name>_<random>``."""
    if database == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / f'{name}.db'}"
        return
    async with temporary_postgres(f"shoploop_bench_{name.replace('-', '_')}") as url:
        yield url


async def count_rows(database_url: str, table: str) -> int:
    """``SELECT count(*)`` of ``table`` (a name from the code, never from input) in that database."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------------------------- CPU

def cpu_of(pid: int) -> float | None:
    """utime + stime of a process, all its threads (Linux /proc); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def service_cpu(pid: int, database_url: str) -> dict[int, float]:
    """CPU seconds so far of a service process (key ``pid``) and, on PostgreSQL, of the server processes
    connected to its database (the other keys)."""
    pids = [pid]
    if database_url.startswith("postgresql"):
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            name = database_url.rsplit("/", 1)[1]
            pids += [row["pid"] for row in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1",
                                                              name)]
        finally:
            await admin.close()
    return {each: cpu for each in pids if (cpu := cpu_of(each)) is not None}


@dataclass(frozen=True)
class ConsumerCost:
    """What applying ``events`` cost: CPU seconds of the service process and of the PostgreSQL server processes
    serving it (0 on SQLite), the wall seconds, and the 1-minute load average at the end.

    CPU time per event is the figure to compare between runs and machines: it does not count the time the
    service waited for a core that other work held, which moves events/s by +-30% on a shared 2-core VM.
    ``events_per_cpu_second`` is its inverse: the rate one core would reach spent on this consumer alone (with
    the PostgreSQL server's share included)."""

    events: int
    service_seconds: float
    server_seconds: float
    wall_seconds: float
    load: float

    @classmethod
    def between(cls, events: int, before: dict[int, float], after: dict[int, float], pid: int,
                wall_seconds: float) -> ConsumerCost:
        spent = {each: after[each] - before.get(each, 0.0) for each in after}
        service = spent.pop(pid, 0.0)
        return cls(events, service, sum(spent.values()), wall_seconds, os.getloadavg()[0])

    @property
    def service_us(self) -> float:
        return self.service_seconds / self.events * 1e6

    @property
    def server_us(self) -> float:
        return self.server_seconds / self.events * 1e6

    @property
    def events_per_cpu_second(self) -> float:
        return self.events / (self.service_seconds + self.server_seconds)

    def text(self, database: str) -> str:
        """CPU per event, events per CPU-second and load, in one line."""
        us = f"{self.service_us:.1f}" if database == "sqlite" else f"{self.service_us:.1f} + {self.server_us:.1f}"
        return (f"{us} µs CPU per event (service [+ PostgreSQL]), {self.events_per_cpu_second:,.0f} events per "
                f"CPU-second, load {self.load:.1f}")

    def add_to(self, rows: Rows, database: str, name: str) -> None:
        """Rows of ``name`` (e.g. "consumer"): CPU per event, events per CPU-second, load during the run."""
        us = f"{self.service_us:.1f}" if database == "sqlite" else f"{self.service_us:.1f} + {self.server_us:.1f}"
        rows.add(f"{name} CPU per event (µs): service process [+ PostgreSQL server]", database,
                 self.service_us + self.server_us, us)
        rows.add(f"{name} events per CPU-second (all of the above on one core)", database,
                 self.events_per_cpu_second, f"{self.events_per_cpu_second:,.0f}", "20,000: one core suffices")
        rows.add(f"{name} load average (1 min) at the end of the run", database, self.load, f"{self.load:.1f}")


# ---------------------------------------------------------------------------------------------- processes

class Process:
    """A service started as ``python -m <module>`` (as ``make run`` starts it) with environment settings on
    top of this process's environment; its stderr goes to ``log``. ``Process.service`` builds the settings."""

    def __init__(self, module: str, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = log
        self.popen = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=dict(os.environ) | env,
                                      stdout=subprocess.DEVNULL, stderr=open(log, "wb"))

    @classmethod
    def service(cls, name: str, kafka: KafkaSettings, log: Path, database_url: str | None = None,
                **settings: str) -> Process:
        """``services.<name>`` on a free port, on ``kafka`` and (when given) ``database_url``, logging
        warnings and worse; ``settings`` are more of its own settings (``workers="1"`` sets
        ``SHOPLOOP_<NAME>__WORKERS=1``).
        Call ``wait_ready`` next, and ``stop`` in any case."""
        prefix = f"SHOPLOOP_{name.upper()}__"
        port = free_port()
        env = client_env(kafka) | {"SHOPLOOP_LOG_LEVEL": "WARNING", f"{prefix}PORT": str(port)}
        if database_url is not None:
            env[f"{prefix}DATABASE_URL"] = database_url
        env |= {f"{prefix}{key.upper()}": value for key, value in settings.items()}
        return cls(f"services.{name}", env, port, log)

    async def wait_ready(self, client: httpx.AsyncClient, deadline_seconds: float = 90.0) -> None:
        """Until ``/readyz`` answers 200; the bench stops (SystemExit) if the process exits or the deadline
        passes."""
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
        """SIGTERM, then SIGKILL if it has not exited within a minute."""
        stop_process(self.popen, grace_seconds=60)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)", re.M)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


async def metric(client: httpx.AsyncClient, base_url: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` (exactly those labels, any order) on the service's
    ``/metrics``; 0 while it has none."""
    exposition = (await client.get(f"{base_url}/metrics")).text
    for sample in _SAMPLE.finditer(exposition):
        if sample[1] == name and dict(_LABEL.findall(sample[2] or "")) == labels:
            return float(sample[3])
    return 0.0


async def consumed(client: httpx.AsyncClient, base_url: str, consumer: str) -> int:
    """Records the service's events consumer ``consumer`` (``"funnel"``, ``"segmentation"``, ...) has applied:
    its ``shoploop_events_consumed_total`` counter, duplicates included."""
    return int(await metric(client, base_url, "shoploop_events_consumed_total", consumer=consumer))


def py_spy(pid: int, out: Path | bool | None, seconds: float, *,
           rate: int = 100) -> subprocess.Popen[bytes] | None:
    """A py-spy recording of ``pid`` (raw stacks, ``rate`` samples a second, at most ``seconds``) into
    ``out``, its own log beside it; nothing when profiles were not asked for (``out`` falsy, as
    ``args.py_spy and path`` is). py-spy is looked for beside the interpreter (the virtualenv), then on PATH.
    End it with ``stop_profile``."""
    if not out:
        return None
    assert isinstance(out, Path)
    beside = Path(sys.executable).parent / "py-spy"
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--py-spy needs py-spy in the virtualenv or on PATH (pip install py-spy)")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", str(rate), "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "wb"))


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    """Ends a ``py_spy`` recording early; py-spy writes its output on SIGINT."""
    if spy is not None and spy.poll() is None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


# ---------------------------------------------------------------------------------------------- load

def ingest_bodies(first: int, ticks: int, per_tick: int, now: datetime, persons: int, *,
                  detail: bool = True) -> list[tuple[bytes, int]]:
    """``ticks`` request bodies for ingest's ``POST /v1/events``, built beforehand so that the load
    generator costs little while measuring: body ``t`` holds events ``first + t * per_tick`` .. of
    ``make_event``, less the identify calls (they come through ``/v1/identify``, not the native route).
    Each with its event count."""
    bodies = []
    for tick in range(ticks):
        start = first + tick * per_tick
        batch = (make_event(start + k, now, persons, detail=detail) for k in range(per_tick))
        events = [event for event in batch if event["type"] != "identify"]
        bodies.append((orjson.dumps({"events": events}), len(events)))
    return bodies


async def steady_load(client: httpx.AsyncClient, ingest_url: str, bodies: list[tuple[bytes, int]],
                      stop_at: float, tick_seconds: float = 0.1) -> int:
    """Posts one of ``bodies`` (``ingest_bodies``) to ``POST /v1/events`` each tick until
    ``time.perf_counter()`` reaches ``stop_at`` or they run out, catching up when behind; returns the events
    sent. Any answer but 200 stops the bench."""
    headers = INGEST | {"Content-Type": "application/json"}
    sent = 0
    next_tick = time.perf_counter()
    for body, events in bodies:
        if time.perf_counter() >= stop_at:
            break
        response = await client.post(f"{ingest_url}/v1/events", content=body, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"ingest answered {response.status_code}: {response.text[:500]}")
        sent += events
        next_tick += tick_seconds
        await asyncio.sleep(max(next_tick - time.perf_counter(), 0))
    return sent


async def probe_at_rate(probe: Callable[[int], Awaitable[None]], per_second: float, stop_at: float) -> None:
    """Starts ``probe(0)``, ``probe(1)``, ... ``1 / per_second`` apart until ``time.perf_counter()`` reaches
    ``stop_at``, then waits for all of them."""
    tasks, k = [], 0
    while time.perf_counter() < stop_at:
        tasks.append(asyncio.create_task(probe(k)))
        k += 1
        await asyncio.sleep(1 / per_second)
    await asyncio.gather(*tasks)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank value at ``fraction`` (0.95 for p95) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---------------------------------------------------------------------------------------------- results

@dataclass
class Rows:
    """Measured values per (measurement, database) over one or more runs; ``table()`` gives the (measurement,
    SQLite, PostgreSQL, target) rows for ``print_table``, a cell of several runs being their median, with the
    lowest and highest and the spread ((highest - lowest) / median) beside it."""

    order: list[str] = field(default_factory=list)
    targets: dict[str, str] = field(default_factory=dict)
    values: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)

    def add(self, measurement: str, database: str, value: float, text: str, target: str = "") -> None:
        """One run's result, also shown on stderr at once: ``value`` orders the runs (the cell shows the
        lowest and highest), ``text`` shows it."""
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
        middle = runs[len(runs) // 2]  # the upper median of an even count: a run's own figure
        spread = (runs[-1][0] - runs[0][0]) / middle[0] if middle[0] else 0.0
        return f"{middle[1]} ({runs[0][1]} – {runs[-1][1]}, ±{spread * 50:.0f}%, {len(runs)} runs)"

    def table(self) -> list[tuple[str, str, str, str]]:
        return [(m, self.cell(m, "sqlite"), self.cell(m, "postgresql"), self.targets[m]) for m in self.order]


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """The bench's result on stdout: ``title`` on a line of its own, then a markdown table."""
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
