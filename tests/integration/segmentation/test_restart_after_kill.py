"""Killed with SIGKILL mid-stream and restarted, the service still publishes each membership change once:
replaying shoploop.segments.v1 (deduplicated by change_id, as consumers do) gives strictly alternating
enter/exit per (segment, person) and ends in exactly the membership the service stores and serves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select

from libs.common.broker import free_port
from libs.common.db import Database
from libs.common.kafka import EVENTS_TOPIC, SEGMENTS_TOPIC, Publisher
from services.segmentation.adapters.migrations import MIGRATIONS
from services.segmentation.adapters.tables import (
    customer_events,
    customer_segments,
    membership_changes,
    metadata,
)
from services.segmentation.segments import BUILTIN_SEGMENTS, membership_ids
from tests.integration.segmentation.conftest import READ, order
from tests.support import eventually, read_topic

ROOT = Path(__file__).resolve().parents[3]


class ServiceProcess:
    def __init__(self, settings, log_path: Path) -> None:
        self.port = free_port()
        kafka = settings.common.kafka
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPLOOP_")} | {
            "SHOPLOOP_ENV": "local",
            "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "SHOPLOOP_KAFKA__TOPIC_PARTITIONS": str(kafka.topic_partitions),
            "SHOPLOOP_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "SHOPLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            "SHOPLOOP_SEGMENTATION__DATABASE_URL": settings.database_url,
            "SHOPLOOP_SEGMENTATION__PORT": str(self.port),
            "SHOPLOOP_SEGMENTATION__MEMBERSHIP__EVALUATION_INTERVAL_SECONDS": "0.2",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.segmentation"], cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)

        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_path.read_text()
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, deadline_seconds=30, what="the service to be ready")

    async def full_evaluations(self) -> int:
        """Full membership evaluations completed so far (from /metrics)."""
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text
        match = re.search(r'^shoploop_segment_evaluation_seconds_count\{scope="all"\} (\S+)$', metrics, re.M)
        return int(float(match.group(1))) if match else 0

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def replay(records: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], list[str]]:
    """Membership after the records, deduplicated by change_id; and every transition that repeats a state."""
    members: set[tuple[str, str]] = set()
    repeated = []
    seen: set[str] = set()
    for record in records:
        if record["change_id"] in seen:
            continue
        seen.add(record["change_id"])
        pair = (record["segment_id"], record["person_key"])
        if (record["change"] == "entered") == (pair in members):
            repeated.append(f"{record['change']} twice: {pair}")
        (members.add if record["change"] == "entered" else members.discard)(pair)
    return members, repeated


async def test_changes_are_published_once_each_across_a_sigkill_restart(settings, tmp_path):
    database = Database(settings.database_url, metadata=metadata, migrations=MIGRATIONS)
    publisher = Publisher(settings.common.kafka, client_id="kill-test")
    await publisher.start()
    service = ServiceProcess(settings, tmp_path / "service.log")
    # Noon yesterday: far from any day boundary while the test runs, and never in the future.
    noon = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    try:
        await service.start()
        await database.start()
        # Waves of orders: each wave moves earlier buyers between RFM cells and adds new members.
        events = []
        for wave in range(6):
            batch = [order(f"u-{wave}-{i}", noon - timedelta(days=(i * 37) % 200, hours=wave), f"e-{wave}-{i}",
                           f"o-{wave}-{i}", f"{100 * (i % 7) + 50}.00") for i in range(40)]
            events += batch
            await publisher.publish_many(EVENTS_TOPIC, [(e.person_key.encode(), e.to_json()) for e in batch])
            if wave == 2:
                await eventually(lambda: _count(database, customer_segments), what="membership before the kill")
                service.kill()
            if wave == 3:
                await service.start()

        async def applied() -> bool:
            return await _count(database, customer_events) == len(events)

        await eventually(applied, deadline_seconds=30, what="every event applied")
        # A full evaluation that started after the last event was applied, and its changes published.
        done = await service.full_evaluations()
        await eventually(lambda: _at_least(service.full_evaluations(), done + 2), what="two more full evaluations")
        await eventually(lambda: _none_queued(database), what="every change published")
        async with database.read() as connection:
            stored = {(segment_id, row.person_key) for row in await connection.execute(select(customer_segments))
                      for segment_id in membership_ids(row.segment_ids)}

        async def replayed() -> tuple[set[tuple[str, str]], list[str], int]:
            records = await read_topic(settings.common.kafka.bootstrap_servers, SEGMENTS_TOPIC, count=10**6,
                                       deadline_seconds=0.5)
            members, repeated = replay([orjson.loads(r.value) for r in records])
            return members, repeated, len(records)

        _, repeated, _ = await eventually(
            lambda: _matching(replayed(), stored), what="the topic to replay into the stored membership"
        )
        assert repeated == []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", headers=READ) as client:
            for segment in BUILTIN_SEGMENTS:
                served = (await client.get(f"/v1/segments/{segment.segment_id}/members",
                                           params={"limit": 1000})).json()["items"]
                assert {item["person_key"] for item in served} == {
                    person for segment_id, person in stored if segment_id == segment.segment_id
                }, segment.segment_id
        kinds = Counter(segment_id.split(":")[0] for segment_id, _ in stored)
        assert kinds["lifecycle"] == len(events) and kinds["rfm"] == len(events)
    finally:
        service.stop()
        await publisher.stop()
        await database.close()


async def _at_least(count, minimum: int) -> bool:
    return await count >= minimum


async def _none_queued(database: Database) -> bool:
    return await _count(database, membership_changes) == 0


async def _matching(replayed, stored):
    members, repeated, count = await replayed
    return (members, repeated, count) if members == stored else None


async def _count(database: Database, table, *where) -> int:
    async with database.read() as connection:
        return (await connection.execute(select(func.count()).select_from(table).where(*where))).scalar_one()
