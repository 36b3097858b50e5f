"""A minimal service process for the SIGKILL test: the real consumer runtime recording what it applies.

Usage: python -m tests.integration.consumer_process BOOTSTRAP DATABASE_URL [claims|unclaimed]

``unclaimed``: the subscription skips the runtime's event_id claim, and the handler is idempotent itself
(it applies only the event_ids not in ``applied`` yet), as the funnel's events consumer is.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database, Migration, create_all
from libs.common.events import Event
from libs.common.kafka import EVENTS_TOPIC, ConsumerRuntime, Publisher, Subscription
from libs.common.metrics import Metrics
from libs.common.settings import KafkaSettings

metadata = MetaData()
applied = Table(
    "applied", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(100), nullable=False),
)
MIGRATIONS = [Migration(1, "applied", create_all(metadata))]
GROUP = "sigkill-test"


class SlowOffsetCommits(ConsumerRuntime):
    """Widens the window between the database commit and the offset commit (a slow broker), so that a
    kill at an arbitrary moment usually lands inside it: the case the processed-events claim exists for."""

    async def _commit_offsets(self, offsets):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)
        await super()._commit_offsets(offsets)


async def record(connection: AsyncConnection, events: Sequence[Event]) -> None:
    await connection.execute(applied.insert(), [{"event_id": e.event_id} for e in events])


async def record_unseen(connection: AsyncConnection, events: Sequence[Event]) -> list[Event]:
    ids = [e.event_id for e in events]
    seen = set((await connection.execute(select(applied.c.event_id).where(applied.c.event_id.in_(ids)))).scalars())
    new = [e for e in events if e.event_id not in seen]
    if new:
        await record(connection, new)
    return new


async def main(bootstrap: str, database_url: str, mode: str = "claims") -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=3000, heartbeat_interval_ms=300)
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    publisher = Publisher(kafka, client_id="sigkill-test")
    await publisher.start()
    # Small batches: many database and offset commits, so kills land between them often.
    if mode == "unclaimed":
        subscription = Subscription(group=GROUP, topics=[EVENTS_TOPIC], handle=record_unseen, max_batch=25,
                                    claim_event_ids=False)
    else:
        subscription = Subscription(group=GROUP, topics=[EVENTS_TOPIC], handle=record, max_batch=25)
    runtime = SlowOffsetCommits(subscription, kafka=kafka, database=database, publisher=publisher,
                              metrics=Metrics("sigkill-test"))
    await runtime.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runtime.stop()
    await publisher.stop()
    await database.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
