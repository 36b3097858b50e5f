"""The one consumer runtime, on a real broker and both databases (SPEC.md "Topics and delivery")."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError, RequestTimedOutError
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import PROCESSED_EVENTS, Database, Migration, create_all, service_metadata
from libs.common.events import Event
from libs.common.kafka import (
    EVENTS_TOPIC,
    ConsumerRuntime,
    Publisher,
    Subscription,
    dead_letter_topic,
    ensure_topics,
)
from libs.common.metrics import Metrics
from tests.support import eventually, read_topic

metadata = MetaData()
applied = Table(
    "applied", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(100), nullable=False),
)
GROUP = "runtime-test"


class SimulatedCrash(Exception):
    """Stands for the process dying between the database commit and the offset commit."""


def event(event_id: str, person: str = "p-1", product_id: str = "sku") -> Event:
    return Event(event_id=event_id, type="view", user_id=person, occurred_at=datetime(2026, 5, 1, tzinfo=UTC),
                 product={"product_id": product_id})


async def record(connection: AsyncConnection, events: Sequence[Event]) -> None:
    await connection.execute(applied.insert(), [{"event_id": e.event_id} for e in events])


class Harness:
    def __init__(self, common_settings, database: Database, publisher: Publisher) -> None:
        self.kafka = common_settings.kafka
        self.database = database
        self.publisher = publisher
        self.runtimes: list[ConsumerRuntime] = []

    async def send(self, *events: Event) -> None:
        await self.publisher.publish_many(EVENTS_TOPIC, [(e.person_key.encode(), e.to_json()) for e in events])

    async def start(self, handle=record, runtime_class=ConsumerRuntime, kafka=None, **options: Any) -> ConsumerRuntime:
        subscription = Subscription(group=GROUP, topics=[EVENTS_TOPIC], handle=handle,
                                    retry_backoff_seconds=0.01, **options)
        runtime = runtime_class(subscription, kafka=kafka or self.kafka, database=self.database,
                                publisher=self.publisher, metrics=Metrics("test"))
        await runtime.start()
        self.runtimes.append(runtime)
        return runtime

    async def applied_counts(self) -> dict[str, int]:
        async with self.database.read() as connection:
            rows = await connection.execute(
                select(applied.c.event_id, func.count()).group_by(applied.c.event_id)
            )
            return dict(rows.all())

    async def wait_applied(self, expected: dict[str, int]) -> None:
        async def done():
            return await self.applied_counts() == expected
        await eventually(done, what=f"applied counts {expected}")


@pytest.fixture
async def harness(common_settings, database_url) -> AsyncIterator[Harness]:
    database = Database(database_url, metadata=metadata, migrations=[Migration(1, "applied", create_all(metadata))])
    await database.start()
    await ensure_topics(common_settings.kafka, [EVENTS_TOPIC, dead_letter_topic(GROUP)])
    publisher = Publisher(common_settings.kafka, client_id="test")
    await publisher.start()
    harness = Harness(common_settings, database, publisher)
    yield harness
    for runtime in harness.runtimes:
        await runtime.stop()
    await publisher.stop()
    await database.close()


def consumed(runtime: ConsumerRuntime, metric: str) -> float:
    return runtime.metrics.registry.get_sample_value(metric, {"consumer": GROUP}) or 0.0


async def test_a_duplicate_event_is_applied_once(harness):
    await harness.send(event("e-1"), event("e-1"), event("e-2"))
    runtime = await harness.start()
    await harness.wait_applied({"e-1": 1, "e-2": 1})
    await harness.send(event("e-1"), event("e-3"))
    await harness.wait_applied({"e-1": 1, "e-2": 1, "e-3": 1})
    assert consumed(runtime, "shoploop_duplicate_events_total") == 2


async def test_a_record_that_keeps_failing_is_dead_lettered_and_the_partition_moves_on(harness, broker):
    attempts: dict[str, int] = {}

    async def fragile(connection, events):
        for e in events:
            if e.product.product_id == "poison":
                attempts[e.event_id] = attempts.get(e.event_id, 0) + 1
                raise ValueError("cannot digest this product")
        await record(connection, events)

    # Same person, so the same partition: the good event after the poison one must still be applied.
    await harness.send(event("good-1"), event("bad", product_id="poison"), event("good-2"))
    runtime = await harness.start(handle=fragile, max_attempts=3)
    await harness.wait_applied({"good-1": 1, "good-2": 1})
    dead = await read_topic(broker.bootstrap_servers, dead_letter_topic(GROUP), count=1)
    assert Event.from_json(dead[0].value).event_id == "bad"
    headers = dict(dead[0].headers)
    assert headers["x-error"] == b"ValueError: cannot digest this product"
    assert headers["x-attempts"] == b"3"
    assert headers["x-error-kind"] == b"poison"
    assert headers["x-original-topic"] == EVENTS_TOPIC.encode()
    # The batch of three, then the half holding it (the batch is halved until the record at fault is alone),
    # then three tries on its own.
    assert attempts["bad"] == 1 + 1 + 3
    assert consumed(runtime, "shoploop_dead_letters_total") == 1
    assert runtime.status.dead_lettered == 1  # what /readyz reports per consumer group
    assert consumed(runtime, "shoploop_processing_errors_total") == attempts["bad"]


async def test_a_record_that_fails_then_succeeds_is_applied_once_and_not_dead_lettered(harness, broker):
    failures = {"left": 2}

    async def flaky(connection, events):
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("transient")
        await record(connection, events)

    await harness.send(event("f-1"))
    runtime = await harness.start(handle=flaky, max_attempts=3)
    await harness.wait_applied({"f-1": 1})
    assert consumed(runtime, "shoploop_dead_letters_total") == 0
    assert await read_topic(broker.bootstrap_servers, dead_letter_topic(GROUP), count=1, deadline_seconds=1) == []


async def test_an_undecodable_record_goes_straight_to_the_dead_letter_topic(harness, broker):
    await harness.publisher.publish(EVENTS_TOPIC, b"p-1", b"{not an event")
    await harness.send(event("after"))
    await harness.start()
    await harness.wait_applied({"after": 1})
    dead = await read_topic(broker.bootstrap_servers, dead_letter_topic(GROUP), count=1)
    assert dead[0].value == b"{not an event"
    assert dict(dead[0].headers)["x-attempts"] == b"1"


async def test_killed_between_database_commit_and_offset_commit_does_not_apply_twice(harness):
    class CrashBeforeOffsetCommit(ConsumerRuntime):
        async def _commit_offsets(self, offsets):
            raise SimulatedCrash

    events = [event(f"k-{i}", person=f"p-{i % 3}") for i in range(20)]
    await harness.send(*events)
    crashed = await harness.start(runtime_class=CrashBeforeOffsetCommit)
    expected = {e.event_id: 1 for e in events}
    await harness.wait_applied(expected)
    await eventually(lambda: crashed.status.failed, what="the simulated crash")
    assert "SimulatedCrash" in crashed.status.failed
    await crashed.stop()  # leaves the group without committing any offset

    restarted = await harness.start()
    await eventually(lambda: consumed(restarted, "shoploop_duplicate_events_total") == 20,
                     what="the restarted consumer to re-read all 20 records")
    assert await harness.applied_counts() == expected


async def test_graceful_stop_commits_the_batch_in_hand(harness):
    await harness.send(*(event(f"g-{i}") for i in range(10)))
    first = await harness.start()
    await harness.wait_applied({f"g-{i}": 1 for i in range(10)})
    await first.stop()
    await harness.send(event("g-new"))
    second = await harness.start()
    await harness.wait_applied({**{f"g-{i}": 1 for i in range(10)}, "g-new": 1})
    assert consumed(second, "shoploop_duplicate_events_total") == 0  # nothing re-read: offsets were committed



async def test_offset_commit_survives_broker_blips_and_lost_rebalances(harness):
    failures = [KafkaConnectionError("broker gone"), RequestTimedOutError(), CommitFailedError("rebalanced")]

    class FlakyCommits(ConsumerRuntime):
        async def _commit_offsets(self, offsets):
            consumer = self._consumer
            real_commit = consumer.commit

            async def commit(offsets):
                if failures:
                    raise failures.pop(0)
                await real_commit(offsets)

            consumer.commit = commit
            try:
                await super()._commit_offsets(offsets)
            finally:
                consumer.commit = real_commit

    await harness.send(event("c-1"))
    runtime = await harness.start(runtime_class=FlakyCommits)
    await harness.wait_applied({"c-1": 1})
    await harness.send(event("c-2"))
    await harness.wait_applied({"c-1": 1, "c-2": 1})
    assert failures == []
    assert runtime.running and runtime.status.failed is None


async def test_after_commit_sees_each_new_event_once_and_only_after_its_transaction(harness):
    seen: list[str] = []
    reads: list[tuple[set[str], asyncio.Task]] = []

    def after_commit(events):
        ids = {e.event_id for e in events}
        seen.extend(ids)
        # A separate connection must already see this call's rows: the transaction has committed.
        reads.append((ids, asyncio.get_running_loop().create_task(harness.applied_counts())))

    await harness.send(event("a-1"), event("a-1"), event("a-2"))
    await harness.start(after_commit=after_commit)
    await harness.wait_applied({"a-1": 1, "a-2": 1})
    await eventually(lambda: len(seen) == 2, what="after_commit calls")
    assert sorted(seen) == ["a-1", "a-2"]
    for ids, read in reads:
        assert ids <= set(await read)


async def record_unseen(connection: AsyncConnection, events: Sequence[Event]) -> list[Event]:
    """A handler idempotent by itself: applies the events whose event_id it has not applied yet; returns them.
    (Within one call it does not look for repeats: two copies in one batch would both be applied.)"""
    ids = [e.event_id for e in events]
    seen = set((await connection.execute(select(applied.c.event_id).where(applied.c.event_id.in_(ids)))).scalars())
    new = [e for e in events if e.event_id not in seen]
    if new:
        await record(connection, new)
    return new


async def claims(database: Database) -> int:
    processed = service_metadata().tables[PROCESSED_EVENTS]
    async with database.read() as connection:
        return (await connection.execute(select(func.count()).select_from(processed))).scalar_one()


async def test_without_claims_the_handler_keeps_exactly_once_and_nothing_is_recorded(harness):
    seen: list[str] = []
    # Copies in one batch (e-1 twice) and across batches (e-1, e-2 again later).
    await harness.send(event("e-1"), event("e-1"), event("e-2"))
    runtime = await harness.start(handle=record_unseen, claim_event_ids=False,
                                  after_commit=lambda events: seen.extend(e.event_id for e in events))
    await harness.wait_applied({"e-1": 1, "e-2": 1})
    await harness.send(event("e-1"), event("e-3"), event("e-2"))
    await harness.wait_applied({"e-1": 1, "e-2": 1, "e-3": 1})
    await eventually(lambda: consumed(runtime, "shoploop_events_consumed_total") == 6, what="all 6 records read")
    assert consumed(runtime, "shoploop_duplicate_events_total") == 3
    assert sorted(seen) == ["e-1", "e-2", "e-3"]  # after_commit sees what the handler says it applied
    assert await claims(harness.database) == 0


async def test_claims_are_recorded_by_default(harness):
    await harness.send(event("d-1"), event("d-2"))
    await harness.start()
    await harness.wait_applied({"d-1": 1, "d-2": 1})
    assert await claims(harness.database) == 2


async def test_without_claims_a_handler_returning_none_counts_every_event_as_applied(harness):
    async def idempotent(connection, events):
        await record_unseen(connection, events)

    await harness.send(event("n-1"), event("n-1"))
    runtime = await harness.start(handle=idempotent, claim_event_ids=False)
    await harness.wait_applied({"n-1": 1})
    await eventually(lambda: consumed(runtime, "shoploop_events_consumed_total") == 2, what="both records read")
    assert consumed(runtime, "shoploop_duplicate_events_total") == 1  # the copy inside the batch


async def parse_product_json(connection: AsyncConnection, events: Sequence[Event]) -> None:
    """A handler whose database rejects some data: the product id must be JSON (SQLite's json(), PostgreSQL's
    jsonb cast), so a record whose product id is not fails inside the database, whatever the retries."""
    cast = "SELECT json(:value)" if connection.dialect.name == "sqlite" else "SELECT CAST(:value AS jsonb)"
    for e in events:
        await connection.execute(text(cast), {"value": e.product.product_id})
    await record(connection, events)


async def test_a_database_error_caused_by_the_data_is_dead_lettered_and_the_partition_moves_on(harness, broker):
    # On SQLite this is an OperationalError ("malformed JSON"), the class that also means "database locked":
    # it must end in the dead-letter topic, not in a retry that stalls the partition forever.
    good = [event(f"j-{i}", product_id=f'"sku-{i}"') for i in range(40)]
    bad = event("j-bad", product_id="{not json")
    await harness.send(*good[:25], bad, *good[25:])
    runtime = await harness.start(handle=parse_product_json)
    await harness.wait_applied({e.event_id: 1 for e in good})
    [dead] = await read_topic(broker.bootstrap_servers, dead_letter_topic(GROUP), count=1)
    assert Event.from_json(dead.value).event_id == "j-bad"
    headers = dict(dead.headers)
    assert headers["x-error-kind"] == b"poison"
    assert b"json" in headers["x-error"].lower()
    assert consumed(runtime, "shoploop_dead_letters_total") == 1


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


async def test_a_lock_that_outlasts_the_bounded_retries_dead_letters_only_the_record_that_meets_it(harness, broker):
    tries: dict[str, int] = {}

    async def locked_on_one(connection, events):
        for e in events:
            if e.event_id == "l-bad":
                tries["l-bad"] = tries.get("l-bad", 0) + 1
                raise _locked()
        await record(connection, events)

    kafka = harness.kafka.model_copy(update={"transient_retries": 2})
    await harness.send(event("l-1"), event("l-bad"), event("l-2"), event("l-3"))
    runtime = await harness.start(handle=locked_on_one, kafka=kafka)
    await harness.wait_applied({"l-1": 1, "l-2": 1, "l-3": 1})
    [dead] = await read_topic(broker.bootstrap_servers, dead_letter_topic(GROUP), count=1)
    assert Event.from_json(dead.value).event_id == "l-bad"
    assert dict(dead.headers)["x-error-kind"] == b"busy"
    assert dict(dead.headers)["x-attempts"] == b"3"  # the first try and transient_retries more
    # Each group it was in (the batch of four, its half of two, itself) was tried 1 + transient_retries times.
    assert tries["l-bad"] == 3 * 3
    assert consumed(runtime, "shoploop_dead_letters_total") == 1


async def test_an_outage_longer_than_every_retry_bound_dead_letters_nothing(harness, broker):
    outage = {"left": 9}  # more failures than transient_retries (2) and max_attempts (3) together

    async def database_away(connection, events):
        if outage["left"]:
            outage["left"] -= 1
            raise OperationalError("INSERT ...", {}, sqlite3.OperationalError("unable to open database file"))
        await record(connection, events)

    kafka = harness.kafka.model_copy(update={"transient_retries": 2})
    await harness.send(event("o-1"), event("o-2", person="p-2"))
    runtime = await harness.start(handle=database_away, kafka=kafka)
    await harness.wait_applied({"o-1": 1, "o-2": 1})
    assert outage["left"] == 0
    assert consumed(runtime, "shoploop_dead_letters_total") == 0
    assert await read_topic(broker.bootstrap_servers, dead_letter_topic(GROUP), count=1, deadline_seconds=1) == []


async def test_the_lag_counts_a_fetched_batch_until_it_is_applied_and_committed(harness):
    # The runtime fetches the next batch while it writes this one, so the fetch position runs ahead of what is
    # applied: the lag (what /readyz and the gateway show, and what tests wait on) must count from the committed
    # offsets, or it reads 0 while a fetched batch is still to be written.
    gate, entered = asyncio.Event(), asyncio.Event()
    runtimes: list[ConsumerRuntime] = []

    async def held(connection, events):
        if any(e.event_id == "later" for e in events):
            entered.set()
            await gate.wait()
        else:
            async def prefetched() -> bool:  # the held batch fetched before this one commits
                if not runtimes:
                    return False
                consumer = runtimes[0]._consumer
                return sum([await consumer.position(tp) for tp in consumer.assignment()]) >= 2
            await eventually(prefetched, what="the next batch fetched")
        await record(connection, events)

    await harness.send(event("first"), event("later"))  # one person: one partition, in this order
    runtime = await harness.start(handle=held, max_batch=1)
    runtimes.append(runtime)
    await asyncio.wait_for(entered.wait(), 30)
    assert runtime.status.lag == 1  # "later" is fetched, not applied
    gate.set()
    await harness.wait_applied({"first": 1, "later": 1})
    await eventually(lambda: runtime.status.lag == 0, what="the lag back to 0 once everything is committed")
