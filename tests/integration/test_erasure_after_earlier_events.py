"""An erasure is applied only after the service's other groups have applied what was published for the person
before it (Subscription.settles_first): nothing orders the events topic against the privacy topic, so without
this a person's earlier events, consumed after their erasure, would store their key again.

The person's event and then their erasure are published; the erasure consumer starts first, and the events
consumer only once the erasure consumer is either waiting for it (settling) or has applied the erasure already.
Only the first keeps the key out of the table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, MetaData, String, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database, Migration, create_all, insert
from libs.common.events import Event
from libs.common.kafka import (
    EVENTS_TOPIC,
    PRIVACY_TOPIC,
    ConsumerRuntime,
    Publisher,
    Subscription,
    ensure_topics,
)
from libs.common.metrics import Metrics
from libs.common.privacy import ErasureRequest, publish_erasure
from tests.support import eventually

metadata = MetaData()
persons = Table("persons", metadata, Column("person_key", String(300), primary_key=True))
EVENTS_GROUP, PRIVACY_GROUP = "settle-events", "settle-privacy"


class Handlers:
    def __init__(self) -> None:
        self.erased = asyncio.Event()

    async def store(self, connection: AsyncConnection, events: Sequence[Event]) -> None:
        statement = insert(connection, persons).on_conflict_do_nothing(index_elements=["person_key"])
        await connection.execute(statement, [{"person_key": e.person_key} for e in events])

    async def erase(self, connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
        for request in requests:
            await connection.execute(delete(persons).where(persons.c.person_key == request.person_key))
        self.erased.set()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, metadata=metadata, migrations=[Migration(1, "persons", create_all(metadata))])
    await db.start()
    yield db
    await db.close()


def privacy_runtime(handlers: Handlers, kafka, database: Database, publisher: Publisher, *,
                    settles_first: dict[str, list[str]], settle_seconds: float) -> ConsumerRuntime:
    """The erasure consumer of the test's persons table, waiting (or not) for the groups of ``settles_first``."""
    return ConsumerRuntime(
        Subscription(group=PRIVACY_GROUP, topics=[PRIVACY_TOPIC], handle=handlers.erase,
                     decode=ErasureRequest.from_json, event_id=lambda request: request.request_id,
                     erases_from=("persons",), settles_first=settles_first, settle_seconds=settle_seconds),
        kafka=kafka, database=database, publisher=publisher, metrics=Metrics("t"))


@pytest.mark.parametrize("settles", [True, False], ids=["settles-first", "without"])
async def test_an_erasure_waits_for_the_persons_earlier_events(common_settings, database: Database, settles: bool):
    kafka = common_settings.kafka
    await ensure_topics(kafka, [EVENTS_TOPIC, PRIVACY_TOPIC])
    publisher = Publisher(kafka, client_id="settle-test")
    await publisher.start()
    gate = Handlers()
    events = ConsumerRuntime(Subscription(group=EVENTS_GROUP, topics=[EVENTS_TOPIC], handle=gate.store),
                             kafka=kafka, database=database, publisher=publisher, metrics=Metrics("t"))
    privacy = privacy_runtime(gate, kafka, database, publisher,
                              settles_first={EVENTS_GROUP: [EVENTS_TOPIC]} if settles else {}, settle_seconds=60)
    try:
        person = Event(event_id="e-1", type="view", user_id="li-lei", occurred_at=datetime(2026, 5, 1, tzinfo=UTC),
                       product={"product_id": "sku"})
        await publisher.publish(EVENTS_TOPIC, person.person_key.encode(), person.to_json())
        await publish_erasure(publisher, ErasureRequest.new(person.person_key, datetime.now(UTC)))
        await privacy.start()
        await eventually(lambda: privacy.status.settling or gate.erased.is_set(),
                         what="the erasure consumer waiting, or done")
        await events.start()
        await eventually(gate.erased.is_set, what="the erasure applied")
        await eventually(lambda: events.status.lag == 0 and events.status.last_processed_at is not None,
                         what="the event applied")
        async with database.read() as connection:
            stored = list((await connection.execute(select(persons.c.person_key))).scalars())
    finally:
        await asyncio.gather(events.stop(), privacy.stop())
        await publisher.stop()
    if settles:
        assert stored == []
    else:
        # The race the setting closes: the earlier event stored the erased key again.
        assert stored == [person.person_key]


async def test_an_erasure_goes_ahead_after_the_bounded_wait_and_says_so(common_settings, database: Database, caplog):
    kafka = common_settings.kafka
    await ensure_topics(kafka, [EVENTS_TOPIC, PRIVACY_TOPIC])
    publisher = Publisher(kafka, client_id="settle-test")
    await publisher.start()
    handlers = Handlers()
    # The events group never runs: the erasure must not wait for it forever.
    privacy = privacy_runtime(handlers, kafka, database, publisher, settles_first={EVENTS_GROUP: [EVENTS_TOPIC]},
                              settle_seconds=0.5)
    try:
        person = Event(event_id="e-1", type="view", user_id="han-mei", occurred_at=datetime(2026, 5, 1, tzinfo=UTC),
                       product={"product_id": "sku"})
        await publisher.publish(EVENTS_TOPIC, person.person_key.encode(), person.to_json())
        await publish_erasure(publisher, ErasureRequest.new(person.person_key, datetime.now(UTC)))
        with caplog.at_level("WARNING", logger="libs.common.kafka"):
            await privacy.start()
            await eventually(handlers.erased.is_set, what="the erasure applied after the wait")
        assert not privacy.status.settling
        assert any(record.getMessage() == "applying before other groups caught up" for record in caplog.records)
    finally:
        await privacy.stop()
        await publisher.stop()
