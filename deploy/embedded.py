"""`make run`: the embedded single-machine stack.

Starts the tansu broker (unless SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS points elsewhere), creates the
topics, starts every service that exists with SQLite under .data/, prints URLs and keys.

Ctrl-C (or SIGTERM) drains before it stops, because the embedded broker keeps records in memory only:
every service first refuses new writes (503 with Retry-After) and finishes those in flight, then the
launcher waits until every consumer group has read and committed everything on its topics (bounded by
SHOPLOOP_EMBEDDED__DRAIN_TIMEOUT_SECONDS), then the services stop (each finishes its batch in hand,
commits and checkpoints its database), and the broker last. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.broker import (
    EmbeddedBroker,
    client_env,
    free_port,
    machine_memory_bytes,
    resident_bytes,
    wait_for_broker,
)
from libs.common.kafka import ALL_TOPICS, ensure_topics, group_lag
from libs.common.service import DRAIN_FILE
from libs.common.settings import DEV_API_KEYS, CommonSettings, KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
# name, default port (SPEC.md "Services and ports"), in start order.
SERVICES = [("ingest", 8001), ("funnel", 8002), ("segmentation", 8003), ("campaigns", 8004), ("gateway", 8000)]
# Measured (docs/benchmarks.md, "Producer compression"): broker memory per stored event, zstd batches (the default)
# of bench/ingest.py's realistic events. Used to say how many more events fit.
BROKER_BYTES_PER_EVENT = 270


class EmbeddedSettings(BaseSettings):
    """The launcher's own settings (``SHOPLOOP_EMBEDDED__...``)."""

    model_config = SettingsConfigDict(env_prefix="SHOPLOOP_EMBEDDED__", extra="ignore")

    # Longest wait, on stop, for every consumer group to read what was accepted; past it the stack stops anyway
    # (and says how many records were left unread).
    drain_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    # The share of the machine's RAM the memory-only broker may take before `make run` says stop and restart.
    broker_memory_share: float = Field(default=0.5, gt=0, le=1)
    # Warnings start when the broker reached this fraction of that budget (and repeat every further 10%).
    broker_memory_warn_at: float = Field(default=0.5, gt=0, le=1)


@dataclass
class Running:
    name: str
    url: str
    process: subprocess.Popen[bytes]


def available_services() -> list[tuple[str, int]]:
    """Services whose package has a ``__main__`` (the stack grows as services land)."""
    return [(name, port) for name, port in SERVICES if (ROOT / "services" / name / "__main__.py").is_file()]


def _service_env(name: str, port: int, bootstrap: str, data_dir: Path, control_dir: Path,
                 broker: EmbeddedBroker | None, running: list[Running]) -> dict[str, str]:
    env = dict(os.environ)
    prefix = f"SHOPLOOP_{name.upper()}__"
    if name == "gateway":
        # The gateway starts last and reaches the services started before it; one not started is not deployed.
        urls = {service.name: service.url for service in running}
        for backend, _ in SERVICES:
            if backend != "gateway":
                env[f"{prefix}{backend.upper()}_URL"] = urls.get(backend, "")
    else:
        env.setdefault(f"{prefix}DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / f'{name}.db'}")
    if name == "funnel":  # its DuckDB copy of the facts, kept across restarts
        env.setdefault(f"{prefix}FACT_COPY_DIR", str(data_dir / "funnel-copy"))
    env[f"{prefix}PORT"] = str(port)
    env["SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    env["SHOPLOOP_CONTROL_DIR"] = str(control_dir)
    if broker is not None:  # tansu's consumer sessions, unless set
        env = client_env(broker.kafka_settings()) | env
    if broker is not None and broker.process is not None:
        env["SHOPLOOP_EMBEDDED_BROKER_PID"] = str(broker.process.pid)
    env.setdefault("SHOPLOOP_API_KEYS", DEV_API_KEYS)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def _wait_ready(running: list[Running], deadline_seconds: float) -> None:
    deadline = time.monotonic() + deadline_seconds
    async with httpx.AsyncClient(timeout=2) as client:
        for service in running:
            while True:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited with status {service.process.returncode}; see its log")
                try:
                    if (await client.get(f"{service.url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service.name} was not ready within {deadline_seconds:.0f}s")
                await asyncio.sleep(0.2)


class Stopping:
    """What the signal handlers tell the main loop: stop (drain first), or stop now (a second Ctrl-C)."""

    def __init__(self) -> None:
        self.requested = False
        self.now = False

    def on_signal(self, _signum: int, _frame: object) -> None:
        if self.requested:
            self.now = True
            print("\nsecond interrupt: stopping without waiting; records not yet read are lost", flush=True)
        self.requested = True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _undrained(control_dir: Path) -> list[str]:
    """Service processes registered in ``control_dir`` (alive) that have not yet reported drained."""
    waiting = []
    for serving in control_dir.glob("*.serving"):
        pid = int(serving.stem.rsplit("-", 1)[1])
        if _pid_alive(pid) and not serving.with_suffix(".drained").exists():
            waiting.append(serving.stem)
    return sorted(waiting)


async def _groups_of(running: list[Running]) -> dict[str, list[str]]:
    """Every consumer group of the running services and the topics it reads (from their /readyz)."""
    groups: dict[str, list[str]] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for service in running:
            try:
                body = (await client.get(f"{service.url}/readyz")).json()
            except (httpx.HTTPError, ValueError):
                continue
            for group, status in body.get("consumers", {}).items():
                groups[group] = list(status.get("topics", []))
    return groups


async def drain(running: list[Running], bootstrap: str, control_dir: Path, settings: EmbeddedSettings,
                stopping: Stopping) -> bool:
    """Refuse new writes, then wait until every consumer group has committed every record on its topics.
    Returns whether that happened within the drain timeout."""
    started = time.monotonic()
    deadline = started + settings.drain_timeout_seconds
    (control_dir / DRAIN_FILE).touch()
    print("stopping: new writes are refused (503, Retry-After); waiting until every consumer has read "
          f"everything accepted (at most {settings.drain_timeout_seconds:.0f} s; Ctrl-C again to stop now)",
          flush=True)
    while True:  # files the services write: nothing to wait on but polling
        waiting = _undrained(control_dir)
        if not waiting or time.monotonic() > deadline or stopping.now:
            break
        await asyncio.sleep(0.05)
    if waiting:
        print(f"drain: {', '.join(waiting)} did not finish their writes in time", flush=True)
        return False
    groups = await _groups_of(running)
    lags: dict[str, int] = {}
    reported = 0.0
    while time.monotonic() < deadline and not stopping.now:
        try:
            lags = await group_lag(bootstrap, groups)
        except Exception as exc:  # the broker's answer, not ours to fix here: report and retry until the deadline
            print(f"drain: could not read the consumer groups' offsets ({type(exc).__name__}); retrying", flush=True)
            lags = {}
        else:
            if not any(lags.values()):
                print(f"drained in {time.monotonic() - started:.1f} s: every consumer group has read everything "
                      f"({len(groups)} groups)", flush=True)
                return True
        if time.monotonic() - reported > 2:
            behind = {group: lag for group, lag in lags.items() if lag}
            print(f"drain: records still unread per consumer group: {behind or 'unknown'}", flush=True)
            reported = time.monotonic()
        await asyncio.sleep(0.2)
    behind = {group: lag for group, lag in lags.items() if lag}
    print(f"drain: stopping with records unread ({behind or 'unknown'}); they are lost with the memory-only broker",
          flush=True)
    return False


# How long the services have to stop after SIGTERM (uvicorn's graceful shutdown is 20 s) before they are killed.
STOP_SECONDS = 30.0


def _stop(running: list[Running], broker: EmbeddedBroker | None, timeout_seconds: float = STOP_SECONDS) -> list[str]:
    """SIGTERM every service, then stop the broker; a service still running ``timeout_seconds`` later is killed.
    Returns the names of those killed."""
    for service in reversed(running):
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    killed = []
    deadline = time.monotonic() + timeout_seconds
    for service in reversed(running):
        try:
            service.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
            killed.append(service.name)
    if broker is not None:
        broker.stop()
    return killed


class BrokerMemoryWatch:
    """Warns, well before the memory-only broker reaches its share of the machine's RAM, that it will."""

    def __init__(self, broker: EmbeddedBroker, settings: EmbeddedSettings) -> None:
        self.broker = broker
        total = machine_memory_bytes()
        self.budget = int(total * settings.broker_memory_share) if total else None
        self.warn_at = settings.broker_memory_warn_at
        self.warned_step = 0
        self.checked = 0.0

    def check(self) -> None:
        if self.budget is None or self.broker.process is None or time.monotonic() - self.checked < 5:
            return
        self.checked = time.monotonic()
        rss = resident_bytes(self.broker.process.pid)
        if rss is None:
            return
        used = rss / self.budget
        step = int(used * 10)  # every further 10% of the budget warns again
        if used >= self.warn_at and step > self.warned_step:
            self.warned_step = step
            room = max(self.budget - rss, 0) // BROKER_BYTES_PER_EVENT
            print(f"warning: the embedded broker holds {rss / 2**20:,.0f} MiB, {used:.0%} of its budget of "
                  f"{self.budget / 2**20:,.0f} MiB (SHOPLOOP_EMBEDDED__BROKER_MEMORY_SHARE of this machine's RAM). "
                  f"It keeps every event in memory until it stops: about {room:,} more events fit. Restart "
                  "`make run` (Ctrl-C drains, the services keep their data) or run on Apache Kafka (README).",
                  file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of 9092 and 8000-8004")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    parser.add_argument("--state-file", type=Path, help="write the URLs as JSON here once everything is ready")
    args = parser.parse_args()
    settings = EmbeddedSettings()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # connection retries while the broker boots
    args.data_dir.mkdir(parents=True, exist_ok=True)
    logs = args.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    control_dir = args.data_dir / "run"
    shutil.rmtree(control_dir, ignore_errors=True)  # a drain request left by a stack that was killed
    control_dir.mkdir()

    external = os.environ.get("SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS")
    broker = None
    if external:
        bootstrap = external
    else:
        # With --free-ports the broker picks its port (and moves if another process takes it before tansu binds).
        broker = EmbeddedBroker(None if args.free_ports else 9092, log_path=logs / "broker.log",
                                own_session=True)  # Ctrl-C reaches the launcher only: it stops the broker last
    running: list[Running] = []
    stopping = Stopping()
    signal.signal(signal.SIGTERM, stopping.on_signal)
    signal.signal(signal.SIGINT, stopping.on_signal)
    ready = False
    try:
        if broker is not None:
            broker.start()
            asyncio.run(broker.wait_ready())
            bootstrap = broker.bootstrap_servers
        else:
            asyncio.run(wait_for_broker(bootstrap))
        kafka = CommonSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap)).kafka
        asyncio.run(ensure_topics(kafka, ALL_TOPICS))
        for name, default_port in available_services():
            port = free_port() if args.free_ports else default_port
            log_file = open(logs / f"{name}.log", "ab")  # stays open as long as the child runs
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                env=_service_env(name, port, bootstrap, args.data_dir, control_dir, broker, running),
                # Its own session: Ctrl-C reaches the launcher only, which drains before it stops anything.
                start_new_session=True,
            )
            running.append(Running(name, f"http://127.0.0.1:{port}", process))
        asyncio.run(_wait_ready(running, deadline_seconds=60))
        ready = True
        _announce(bootstrap, running, logs, embedded=broker is not None)
        if args.state_file:
            # Written aside and renamed: whoever waits for the file never reads it half written.
            written = args.state_file.with_name(f"{args.state_file.name}.tmp")
            written.write_text(json.dumps({"broker": bootstrap, **{s.name: s.url for s in running}}))
            written.replace(args.state_file)
        memory = BrokerMemoryWatch(broker, settings) if broker is not None else None
        while not stopping.requested:
            for service in running:
                if service.process.poll() is not None:
                    print(f"{service.name} exited with status {service.process.returncode}; stopping the stack",
                          file=sys.stderr)
                    return 1
            if memory is not None:
                memory.check()
            time.sleep(0.2)
        print(flush=True)
        drained = asyncio.run(drain(running, bootstrap, control_dir, settings, stopping))
        print("services finish their batch in hand and close their databases, then the broker stops", flush=True)
        status = 0 if drained else 1
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"make run failed: {exc}\nlogs: {logs}", file=sys.stderr)
        return 1
    finally:
        killed = _stop(running, broker)
        shutil.rmtree(control_dir, ignore_errors=True)
        if killed:
            # Not a clean stop: a SQLite database then keeps its last writes in the -wal file beside it (applied at
            # the next start), not in the file itself.
            print(f"{', '.join(killed)} did not stop within {STOP_SECONDS:.0f} s and {'was' if len(killed) == 1 else 'were'} "
                  f"killed; logs: {logs}", file=sys.stderr, flush=True)
        if ready:
            print("stopped", flush=True)
    return 1 if killed else status


def _announce(bootstrap: str, running: list[Running], logs: Path, *, embedded: bool) -> None:
    width = max(len(s.name) for s in running)
    print("\nshoploop is running (Ctrl-C drains and stops it)\n")
    gateway = next((s.url for s in running if s.name == "gateway"), None)
    if gateway:
        print(f"  dashboard: {gateway}/   (API key field: dev-read-key; every route: {gateway}/docs)\n")
    print(f"  {'broker':<{width}}  {bootstrap}   {'(tansu, memory only)' if embedded else '(external)'}")
    for service in running:
        print(f"  {service.name:<{width}}  {service.url}   docs: {service.url}/docs")
    print("\n  API keys (local mode only):")
    for entry in DEV_API_KEYS.split(";"):
        key, _, scopes = entry.partition(":")
        print(f"    {key:<20} {scopes}")
    print(f"\n  logs: {logs}\n")
    # Every route is served by the gateway too: one host for users.
    ingest = gateway or next((s.url for s in running if s.name == "ingest"), None)
    if ingest:
        print("  try:  make demo   (a simulated storefront posting a month of events; then reload the dashboard)")
        print("  or:")
        print(f"    curl -s -X POST {ingest}/v1/events -H 'Authorization: Bearer dev-ingest-key' \\")
        print("      -d '{\"type\":\"view\",\"user_id\":\"u-1\",\"occurred_at\":\"2026-05-01T10:00:00+08:00\","
              "\"product\":{\"product_id\":\"sku-1\",\"name\":\"真丝连衣裙\"}}'\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
