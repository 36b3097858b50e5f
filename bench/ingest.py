"""Ingest throughput on this machine (issue: foundation; run by `make bench`).

Measures, against a real tansu broker and the ingest service as `make run` starts it:
  1. raw aiokafka producer throughput (acks=all, same linger and record size) to the same broker;
  2. POST /v1/batch-style native batches of 100 events (events/s, request latency);
  3. single-event POST /v1/events (requests/s, p50/p99 latency).
The load generator runs in its own process and speaks plain HTTP/1.1 keep-alive with pre-built
requests, so the client's own cost stays small next to the server's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.broker import EmbeddedBroker, free_port  # noqa: E402
from libs.common.events import ValidationContext, validate_event  # noqa: E402
from libs.common.kafka import ALL_TOPICS, ensure_topics  # noqa: E402
from libs.common.settings import KafkaSettings  # noqa: E402

KEY = "dev-ingest-key"


def make_event(i: int) -> dict:
    """A realistic mix: mostly views, some carts and orders, Chinese names, UTM channels."""
    person = f"u-{i % 50_000}"
    when = (datetime.now(UTC) - timedelta(minutes=i % 10_000)).isoformat()
    product = {"product_id": f"sku-{i % 2000}", "name": f"真丝连衣裙 {i % 2000}", "category": f"cat-{i % 40}",
               "price": 399.0}
    channel = {"source": ("douyin", "xiaohongshu", "google", "wechat")[i % 4], "medium": "cpc", "campaign": "may"}
    base = {"event_id": str(uuid.uuid4()), "user_id": person, "occurred_at": when, "channel": channel,
            "session_id": f"s-{i % 90_000}"}
    kind = i % 10
    if kind < 7:
        return base | {"type": "view", "product": product}
    if kind < 9:
        return base | {"type": "add_to_cart", "product": product, "quantity": 1 + i % 3}
    return base | {"type": "order", "order": {"order_id": f"o-{i}", "status": "completed", "total": 798.0,
                                              "items": [{"product_id": product["product_id"], "quantity": 2,
                                                         "unit_price": 399.0}]}}


def _request(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _connection(port: int, requests: list[bytes], stop_at: float, latencies: list[float],
                      statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        writer.write(requests[i % len(requests)])
        i += 1
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        status = int(status_line.split()[1])
        statuses[status] = statuses.get(status, 0) + 1
    writer.close()


def _load(port: int, bodies: list[bytes], connections: int, seconds: float, queue: multiprocessing.Queue) -> None:
    async def run() -> None:
        requests = [_request(port, body) for body in bodies]
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()
        per_connection = [requests[c::connections] for c in range(connections)]
        await asyncio.gather(*(_connection(port, chunk, stop_at, latencies, statuses) for chunk in per_connection))
        queue.put((time.perf_counter() - started, latencies, statuses))

    asyncio.run(run())


def run_load(port: int, bodies: list[bytes], *, connections: int, seconds: float) -> tuple[float, list[float], dict]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=_load, args=(port, bodies, connections, seconds, queue))
    process.start()
    result = queue.get(timeout=seconds + 120)
    process.join()
    return result


async def raw_producer_throughput(bootstrap: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=1_048_576)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send("bench.raw", value=value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        return len(records) / (time.perf_counter() - started)
    finally:
        await producer.stop()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each HTTP load phase")
    parser.add_argument("--raw-records", type=int, default=200_000)
    args = parser.parse_args()

    broker = EmbeddedBroker()
    broker.start()
    asyncio.run(broker.wait_ready())
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    asyncio.run(ensure_topics(kafka, [*ALL_TOPICS, "bench.raw"]))
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="shoploop-bench-"))
    env = dict(os.environ) | {
        "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers, "SHOPLOOP_INGEST__PORT": str(port),
        "SHOPLOOP_INGEST__DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'ingest.db'}",
        "SHOPLOOP_INGEST__RATE_LIMIT__EVENTS_PER_SECOND": "100000000",
        "SHOPLOOP_INGEST__RATE_LIMIT__BURST": "100000000", "SHOPLOOP_LOG_LEVEL": "WARNING",
    }
    service = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "ingest.log", "wb"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit(f"ingest did not become ready; see {workdir / 'ingest.log'}")
            time.sleep(0.2)

        events = [make_event(i) for i in range(args.raw_records)]
        context = ValidationContext(received_at=datetime.now(UTC), currency="CNY")
        published = [validate_event(e, index=0, context=context) for e in events[:50_000]]
        records = [(e.person_key.encode(), e.to_json()) for e in published]
        records = (records * (args.raw_records // len(records) + 1))[: args.raw_records]
        raw_rate = asyncio.run(raw_producer_throughput(broker.bootstrap_servers, records))

        batch_bodies = [orjson.dumps({"events": events[i : i + 100]}) for i in range(0, 100_000, 100)]
        elapsed, latencies, statuses = run_load(port, batch_bodies, connections=8, seconds=args.seconds)
        batch_rate = statuses.get(200, 0) * 100 / elapsed
        batch_row = (batch_rate, percentile(latencies, 0.5), percentile(latencies, 0.99), statuses)

        single_bodies = [orjson.dumps(e) for e in events[100_000:140_000]]
        elapsed, latencies, statuses = run_load(port, single_bodies, connections=32, seconds=args.seconds)
        single_rate = statuses.get(200, 0) / elapsed
        single_row = (single_rate, percentile(latencies, 0.5), percentile(latencies, 0.99), statuses)
    finally:
        service.terminate()
        service.wait(timeout=30)
        broker.stop()

    size = statistics.mean(len(v) for _, v in records)
    print(f"\nshoploop ingest benchmark — {os.cpu_count()} cores, tansu broker, record ~{size:.0f} B, "
          f"{args.seconds:.0f} s per phase\n")
    print("| measurement | throughput | p50 | p99 | target | statuses |")
    print("|---|---|---|---|---|---|")
    print(f"| raw aiokafka producer (acks=all) | {raw_rate:,.0f} events/s | | | | |")
    print(f"| POST /v1/events, 100 events/request, 8 connections | {batch_row[0]:,.0f} events/s "
          f"({batch_row[0] / raw_rate:.0%} of raw) | {batch_row[1] * 1000:.1f} ms | {batch_row[2] * 1000:.1f} ms "
          f"| >= 20,000 events/s and >= 50% of raw | {batch_row[3]} |")
    print(f"| POST /v1/events, 1 event/request, 32 connections | {single_row[0]:,.0f} requests/s "
          f"| {single_row[1] * 1000:.1f} ms | {single_row[2] * 1000:.1f} ms | >= 3,000 requests/s, p99 < 50 ms "
          f"| {single_row[3]} |")


if __name__ == "__main__":
    main()
