"""`make run`: the embedded single-machine stack.

Starts the tansu broker (unless SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS points elsewhere), creates the
topics, starts every service that exists with SQLite under .data/, prints URLs and keys, and on
Ctrl-C stops the services (each finishes its batch in hand) and then the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from libs.common.broker import EmbeddedBroker, free_port, wait_for_broker
from libs.common.kafka import ALL_TOPICS, ensure_topics
from libs.common.settings import DEV_API_KEYS, CommonSettings, KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
# name, default port (SPEC.md "Services and ports"), in start order.
SERVICES = [("ingest", 8001), ("funnel", 8002), ("segmentation", 8003), ("campaigns", 8004), ("gateway", 8000)]


@dataclass
class Running:
    name: str
    url: str
    process: subprocess.Popen[bytes]


def available_services() -> list[tuple[str, int]]:
    """Services whose package has a ``__main__`` (the stack grows as services land)."""
    return [(name, port) for name, port in SERVICES if (ROOT / "services" / name / "__main__.py").is_file()]


def _service_env(name: str, port: int, bootstrap: str, data_dir: Path, running: list[Running]) -> dict[str, str]:
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
    env[f"{prefix}PORT"] = str(port)
    env["SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
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


def _stop(running: list[Running], broker: EmbeddedBroker | None) -> None:
    for service in reversed(running):
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in reversed(running):
        try:
            service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.process.kill()
    if broker is not None:
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of 9092 and 8000-8004")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    parser.add_argument("--state-file", type=Path, help="write the URLs as JSON here once everything is ready")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # connection retries while the broker boots
    args.data_dir.mkdir(parents=True, exist_ok=True)
    logs = args.data_dir / "logs"
    logs.mkdir(exist_ok=True)

    external = os.environ.get("SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS")
    broker = None
    if external:
        bootstrap = external
    else:
        broker = EmbeddedBroker(free_port() if args.free_ports else 9092, log_path=logs / "broker.log")
        bootstrap = broker.bootstrap_servers
    running: list[Running] = []
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if broker is not None:
            broker.start()
        asyncio.run(wait_for_broker(bootstrap))
        kafka = CommonSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap)).kafka
        asyncio.run(ensure_topics(kafka, ALL_TOPICS))
        for name, default_port in available_services():
            port = free_port() if args.free_ports else default_port
            log_file = open(logs / f"{name}.log", "ab")  # stays open as long as the child runs
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, env=_service_env(name, port, bootstrap, args.data_dir, running),
            )
            running.append(Running(name, f"http://127.0.0.1:{port}", process))
        asyncio.run(_wait_ready(running, deadline_seconds=60))
        _announce(bootstrap, running, logs)
        if args.state_file:
            args.state_file.write_text(json.dumps({"broker": bootstrap, **{s.name: s.url for s in running}}))
        while not stopping:
            for service in running:
                if service.process.poll() is not None:
                    print(f"{service.name} exited with status {service.process.returncode}; stopping the stack",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
        print("\nstopping: services finish their batch in hand, then the broker stops")
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"make run failed: {exc}\nlogs: {logs}", file=sys.stderr)
        return 1
    finally:
        _stop(running, broker)


def _announce(bootstrap: str, running: list[Running], logs: Path) -> None:
    width = max(len(s.name) for s in running)
    print("\nshoploop is running (Ctrl-C stops it)\n")
    gateway = next((s.url for s in running if s.name == "gateway"), None)
    if gateway:
        print(f"  dashboard: {gateway}/   (API key field: dev-read-key; every route: {gateway}/docs)\n")
    print(f"  {'broker':<{width}}  {bootstrap}   (tansu, memory only)")
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
