"""A consumer process killed with SIGKILL at arbitrary moments ends with every event applied exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from libs.common.db import Database
from libs.common.events import Event
from libs.common.kafka import EVENTS_TOPIC, Publisher, ensure_topics
from tests.integration.consumer_process import MIGRATIONS, applied, metadata
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 1500


def _start(broker, database_url: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.consumer_process", broker.bootstrap_servers, database_url, mode],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


# "unclaimed": the runtime records no event_ids, the handler's own idempotency carries exactly-once.
@pytest.mark.parametrize("mode", ["claims", "unclaimed"])
async def test_sigkilled_consumer_restarts_to_exactly_once_effects(broker, common_settings, database_url, mode):
    await ensure_topics(common_settings.kafka, [EVENTS_TOPIC])
    publisher = Publisher(common_settings.kafka, client_id="test")
    await publisher.start()
    events = [Event(event_id=f"k-{i}", type="view", user_id=f"p-{i % 37}",
                    occurred_at=datetime(2026, 5, 1, tzinfo=UTC), product={"product_id": "sku"})
              for i in range(EVENTS)]
    await publisher.publish_many(EVENTS_TOPIC, [(e.person_key.encode(), e.to_json()) for e in events])
    await publisher.stop()

    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()

    async def counts() -> tuple[int, int]:
        async with database.read() as connection:
            row = (await connection.execute(
                select(func.count(), func.count(applied.c.event_id.distinct()))
            )).one()
            return row[0], row[1]

    try:
        killed_at = []
        for _ in range(3):
            process = _start(broker, database_url, mode)
            before = (await counts())[1]
            # Kill it once it has made some progress but not finished: mid-stream, at no chosen point.
            await eventually(lambda b=before: _progressed(counts, b), deadline_seconds=30,
                             interval=0.01, what="the consumer to make progress")
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at.append((await counts())[1])
        process = _start(broker, database_url, mode)
        await eventually(lambda: _all_applied(counts), deadline_seconds=60, what=f"all {EVENTS} events applied")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        total, distinct = await counts()
        assert (total, distinct) == (EVENTS, EVENTS), f"killed after {killed_at} distinct events"
        assert killed_at[0] < EVENTS  # the kills did land mid-stream
    finally:
        await database.close()


async def _progressed(counts, before: int) -> bool:
    return (await counts())[1] >= before + 100


async def _all_applied(counts) -> bool:
    return (await counts())[1] == EVENTS
