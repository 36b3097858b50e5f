"""Ingest throughput on this machine (issue: foundation; run by `make bench`).

Measures, against a real tansu broker and the ingest service as `make run` starts it:
  1. raw aiokafka producer throughput (acks=all, same linger and record size) to the same broker;
  2. POST /v1/batch-style native batches of 100 events (events/s, request latency);
  3. single-event POST /v1/events (requests/s, p50/p99 latency).
With ``--compare-codecs`` it measures instead, for each producer compression codec (KafkaSettings.compression_type)
on a fresh broker each: batch throughput, ingest's CPU per million events and the embedded broker's resident
memory per million events (the broker keeps every record in memory: what `make run` can hold per GB).
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

from libs.common.broker import EmbeddedBroker, free_port, resident_bytes  # noqa: E402
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


async def raw_producer_throughput(bootstrap: str, records: list[tuple[bytes, bytes]], codec: str) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=1_048_576,
                                compression_type=None if codec == "none" else codec)
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


def start_ingest(broker: EmbeddedBroker, workdir: Path, **settings: str) -> tuple[subprocess.Popen, int]:
    """The ingest service as `make run` starts it, on ``broker``; returns once /readyz answers 200."""
    port = free_port()
    env = dict(os.environ) | {
        "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers, "SHOPLOOP_INGEST__PORT": str(port),
        "SHOPLOOP_INGEST__DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'ingest.db'}",
        "SHOPLOOP_INGEST__RATE_LIMIT__EVENTS_PER_SECOND": "100000000",
        "SHOPLOOP_INGEST__RATE_LIMIT__BURST": "100000000", "SHOPLOOP_LOG_LEVEL": "WARNING", **settings,
    }
    service = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "ingest.log", "ab"))
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return service, port
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or service.poll() is not None:
            service.terminate()
            raise SystemExit(f"ingest did not become ready; see {workdir / 'ingest.log'}")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children processes (uvicorn's workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def compare_codecs(codecs: list[str], seconds: float, events: list[dict]) -> None:
    """Per codec, on a fresh broker and ingest: batch throughput, CPU and broker memory per million events."""
    bodies = [orjson.dumps({"events": events[i : i + 100]}) for i in range(0, len(events), 100)]
    rows = []
    for codec in codecs:
        broker = EmbeddedBroker()
        broker.start()
        workdir = Path(tempfile.mkdtemp(prefix=f"shoploop-bench-{codec}-"))
        try:
            asyncio.run(broker.wait_ready())
            asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap_servers), ALL_TOPICS))
            service, port = start_ingest(broker, workdir, SHOPLOOP_KAFKA__COMPRESSION_TYPE=codec)
            try:
                rss_before = resident_bytes(broker.process.pid) or 0
                cpu_before = cpu_seconds(service.pid), cpu_seconds(broker.process.pid)
                elapsed, latencies, statuses = run_load(port, bodies, connections=8, seconds=seconds)
                accepted = statuses.get(200, 0) * 100
                ingest_cpu = cpu_seconds(service.pid) - cpu_before[0]
                broker_cpu = cpu_seconds(broker.process.pid) - cpu_before[1]
                rss_after = resident_bytes(broker.process.pid) or 0
            finally:
                service.terminate()
                service.wait(timeout=30)
        finally:
            broker.stop()
        per_million = 1_000_000 / max(accepted, 1)
        rows.append((codec, accepted / elapsed, percentile(latencies, 0.99), ingest_cpu * per_million,
                     broker_cpu * per_million, (rss_after - rss_before) * per_million, accepted, statuses))
    size = statistics.mean(len(orjson.dumps(e)) for e in events[:1000])
    print(f"\nproducer compression — {os.cpu_count()} cores (shared with other work: compare rows, not absolutes), "
          f"events ~{size:.0f} B as posted, 100 per request, 8 connections, {seconds:.0f} s per codec\n")
    print("| codec | events/s | p99 | ingest CPU s / 1M events | broker CPU s / 1M events "
          "| broker memory / 1M events | events per GB of broker memory | events | statuses |")
    print("|---|---|---|---|---|---|---|---|---|")
    for codec, rate, p99, ingest_cpu, broker_cpu, memory, accepted, statuses in rows:
        per_gb = f"{2**30 / (memory / 1_000_000):,.0f}" if memory > 0 else "n/a"
        print(f"| {codec} | {rate:,.0f} | {p99 * 1000:.0f} ms | {ingest_cpu:.0f} | {broker_cpu:.0f} "
              f"| {memory / 2**20:,.0f} MiB | {per_gb} | {accepted:,} | {statuses} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each HTTP load phase")
    parser.add_argument("--raw-records", type=int, default=200_000)
    parser.add_argument("--compare-codecs", action="store_true",
                        help="measure each producer compression codec instead of the usual phases")
    parser.add_argument("--codecs", default="none,gzip,snappy,lz4,zstd")
    args = parser.parse_args()
    codec = KafkaSettings().compression_type

    if args.compare_codecs:
        compare_codecs(args.codecs.split(","), args.seconds, [make_event(i) for i in range(100_000)])
        return

    broker = EmbeddedBroker()
    broker.start()
    asyncio.run(broker.wait_ready())
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    asyncio.run(ensure_topics(kafka, [*ALL_TOPICS, "bench.raw"]))
    workdir = Path(tempfile.mkdtemp(prefix="shoploop-bench-"))
    service, port = start_ingest(broker, workdir)
    try:
        events = [make_event(i) for i in range(args.raw_records)]
        context = ValidationContext(received_at=datetime.now(UTC), currency="CNY")
        published = [validate_event(e, index=0, context=context) for e in events[:50_000]]
        records = [(e.person_key.encode(), e.to_json()) for e in published]
        records = (records * (args.raw_records // len(records) + 1))[: args.raw_records]
        raw_rate = asyncio.run(raw_producer_throughput(broker.bootstrap_servers, records, codec))

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
          f"{args.seconds:.0f} s per phase, producer compression {codec}\n")
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
