"""Kafka for every service: topic names, topic creation, the publisher and the one consumer runtime.

The runtime follows SPEC.md "Topics and delivery": it reads a batch, applies it in one database
transaction that also records ``(consumer, event_id)`` (so the database rejects duplicates), commits
that transaction, and only then commits offsets. A record that keeps failing goes to the group's
dead-letter topic after bounded retries, so the partition keeps moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.partitioner import murmur2
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database, claim_events
from libs.common.events import PublishedEvent
from libs.common.metrics import Metrics
from libs.common.settings import KafkaSettings

log = logging.getLogger(__name__)

EVENTS_TOPIC = "shoploop.events.v1"
REJECTED_TOPIC = "shoploop.events.rejected.v1"
SEGMENTS_TOPIC = "shoploop.segments.v1"
CAMPAIGNS_TOPIC = "shoploop.campaigns.v1"
PRIVACY_TOPIC = "shoploop.privacy.v1"
ALL_TOPICS = (EVENTS_TOPIC, REJECTED_TOPIC, SEGMENTS_TOPIC, CAMPAIGNS_TOPIC, PRIVACY_TOPIC)


def dead_letter_topic(group: str) -> str:
    """The dead-letter topic of one consumer group."""
    return f"shoploop.dlq.{group}.v1"


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time (or cannot be reached)."""


async def ensure_topics(kafka: KafkaSettings, topics: Sequence[str]) -> None:
    """Create the missing topics with the configured partition count. Idempotent under any number of
    processes doing it at once: a topic another one created first (TopicAlreadyExists) is what we wanted."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=kafka.request_timeout_ms,
        client_id=f"{kafka.client_id_prefix}-admin",
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=kafka.topic_partitions, replication_factor=kafka.replication_factor)
            for name in topics
            if name not in existing
        ]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                response = None  # created by another process starting at the same time
            # create_topics answers each topic's outcome instead of raising: look at them.
            for name, code, *_ in getattr(response, "topic_errors", ()):
                error = for_code(code)
                if code and error is not TopicAlreadyExistsError:
                    raise error(f"creating topic {name}")
            log.info("created topics", extra={"topics": [topic.name for topic in missing]})
    finally:
        await admin.close()


async def group_lag(bootstrap_servers: str, groups: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Per consumer group, the records of its topics it has not committed yet (end offset minus committed
    offset, summed over every partition; a partition without a commit counts from its start, offset 0)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await admin.start()
    try:
        await reader.start()
        await reader.topics()  # loads every topic's partitions
        partitions = {topic: [TopicPartition(topic, n) for n in sorted(reader.partitions_for_topic(topic) or ())]
                      for topics in groups.values() for topic in topics}
        every = [tp for tps in partitions.values() for tp in tps]
        ends = await reader.end_offsets(every) if every else {}
        lags = {}
        for group, topics in groups.items():
            wanted = [tp for topic in topics for tp in partitions[topic]]
            committed = await admin.list_consumer_group_offsets(group, partitions=wanted)
            lags[group] = sum(
                max(ends[tp] - max(committed[tp].offset if tp in committed else 0, 0), 0) for tp in wanted
            )
        return lags
    finally:
        await reader.stop()
        await admin.close()


class Publisher:
    """An acks=all producer; ``publish_many`` returns only once the broker acknowledged every record."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str, metrics: Metrics | None = None) -> None:
        self.kafka = kafka
        self.client_id = client_id
        self.metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            client_id=f"{self.kafka.client_id_prefix}-{self.client_id}",
            acks="all",
            enable_idempotence=self.kafka.enable_idempotence,
            compression_type=None if self.kafka.compression_type == "none" else self.kafka.compression_type,
            linger_ms=self.kafka.linger_ms,
            max_batch_size=self.kafka.max_batch_bytes,
            max_request_size=self.kafka.max_batch_bytes,
            request_timeout_ms=self.kafka.request_timeout_ms,
        )

    async def start(self, *, wait: bool = True) -> None:
        """Connect; with ``wait=False`` keep trying in the background (the service starts unready)."""
        if wait:
            await self._connect_once()
        else:
            self._connecting = asyncio.create_task(self._connect_forever())

    async def _connect_once(self) -> None:
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def _connect_forever(self) -> None:
        delay = 0.2
        while self._producer is None:
            try:
                await self._connect_once()
            except KafkaError as exc:
                log.warning("broker not reachable yet", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def ping(self, wait_seconds: float = 2.0) -> None:
        """Raise unless the broker answers a metadata request."""
        if self._producer is None:
            raise BrokerUnavailable("producer not connected")
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), wait_seconds)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc

    async def publish_many(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]], *, wait_seconds: float | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send ``(key, value)`` records and wait until every one is acknowledged (acks=all)."""
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the broker is not connected")
        deadline = wait_seconds if wait_seconds is not None else self.kafka.request_timeout_ms / 1000

        async def _send_all() -> None:
            futures = await self._send_batches(producer, topic, records, list(headers) if headers else [])
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(_send_all(), deadline)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker did not acknowledge: {exc or type(exc).__name__}") from exc
        if self.metrics is not None:
            self.metrics.published.labels(topic).inc(len(records))

    async def _send_batches(
        self, producer: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes | None, bytes]],
        headers: list[tuple[str, bytes]],
    ) -> list[asyncio.Future[Any]]:
        # One batch per partition instead of one send() per record: the per-record path is pure Python
        # and was a third of ingest's time. Placement is Kafka's (murmur2 of the key), as send() does.
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for key, value in records:
            if key is None:
                partition = random.choice(partitions)
            else:
                partition = partitions[_partition_of(key, len(partitions))]
            by_partition.setdefault(partition, []).append((key, value))
        futures = []
        for partition, pending in by_partition.items():
            if len(pending) < _OWN_BATCH_MIN_RECORDS:
                # A few records join the partition's open batch; an own batch would queue behind it.
                for key, value in pending:
                    futures.append(
                        await producer.send(topic, value=value, key=key, partition=partition, headers=headers or None)
                    )
                continue
            batch = producer.create_batch()
            for key, value in pending:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a record of {len(value)} bytes exceeds the producer's max batch size")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def publish(self, topic: str, key: bytes | None, value: bytes, **options: Any) -> None:
        await self.publish_many(topic, [(key, value)], **options)


_OWN_BATCH_MIN_RECORDS = 8


@functools.lru_cache(maxsize=200_000)
def _partition_of(key: bytes, partition_count: int) -> int:
    """Index of the partition Kafka's default partitioner picks (murmur2 is pure Python here: cache it)."""
    return (murmur2(key) & 0x7FFFFFFF) % partition_count


# A handler applies a batch of new (never seen by this consumer) events inside the open transaction. With
# ``Subscription.claim_event_ids=False`` it gets every event of the batch and returns the ones it applied.
BatchHandler = Callable[[AsyncConnection, Sequence[Any]], Awaitable[Sequence[Any] | None]]


# SQLite error texts (sqlite3 gives no error code before Python 3.11's ``sqlite_errorcode``, and SQLAlchemy wraps
# them all as OperationalError): the database file is out of reach, or another writer holds the lock.
_SQLITE_OUTAGE = ("unable to open database file", "disk i/o error", "database or disk is full", "readonly database")
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")
# PostgreSQL SQLSTATEs: 08 connection exception, 57P0x shutdown / cannot connect now, 53 insufficient resources;
# 40001 serialization failure, 40P01 deadlock, 55P03 lock not available.
_PG_OUTAGE_PREFIXES = ("08", "57P", "53")
_PG_BUSY = ("40001", "40P01", "55P03")

ErrorKind = Literal["outage", "busy", "poison"]


def _causes(error: BaseException) -> list[BaseException]:
    """The error, the DB-API error SQLAlchemy wrapped and what caused them (no cycles)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
    return chain


def classify_error(error: BaseException) -> ErrorKind:
    """``outage``: the database or broker cannot be reached (retry without limit: never dead-letter for it);
    ``busy``: a lock or conflict that retrying may clear (bounded retries, then the batch is split);
    ``poison``: anything else, the data's fault until proven otherwise (split, then dead-letter)."""
    if isinstance(error, KafkaError):
        return "outage" if error.retriable or isinstance(error, KafkaTimeoutError) else "poison"
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return "outage"
    for cause in _causes(error):
        if isinstance(cause, (BrokerUnavailable, OSError, TimeoutError)) or "Connection" in type(cause).__name__:
            return "outage"
        # An InterfaceError is the connection's state (closed, lost) or a value the driver cannot bind (data).
        if isinstance(cause, InterfaceError) and any(word in str(cause).lower() for word in ("connection", "closed")):
            return "outage"
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str):
            if state.startswith(_PG_OUTAGE_PREFIXES):
                return "outage"
            if state in _PG_BUSY:
                return "busy"
    if isinstance(error, OperationalError):
        text = str(getattr(error, "orig", error)).lower()
        if any(marker in text for marker in _SQLITE_OUTAGE):
            return "outage"
        if any(marker in text for marker in _SQLITE_BUSY):
            return "busy"
    return "poison"


def is_transient(error: BaseException) -> bool:
    """True for an outage or a lock (worth retrying), False when the record itself may be bad."""
    return classify_error(error) != "poison"


class _GaveUp(Exception):
    """A batch (or one record) failed for other reasons than an outage as often as it may."""

    def __init__(self, error: BaseException, attempts: int) -> None:
        super().__init__(repr(error))
        self.error = error
        self.attempts = attempts


class _StopRequested(Exception):
    """The service is stopping while a batch keeps failing: leave it unapplied and uncommitted (read again)."""


# The group moved on without us: the partitions' new owner re-reads and the database skips what we applied.
_GROUP_MOVED_ON = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError)


def _event_id(event: Any) -> str:
    return event.event_id


def _occurred_at(event: Any) -> datetime | None:
    return getattr(event, "occurred_at", None)


@dataclass(frozen=True)
class Subscription:
    """What one consumer group reads and how it applies it."""

    group: str
    topics: Sequence[str]
    handle: BatchHandler
    decode: Callable[[bytes], Any] = PublishedEvent.from_json
    event_id: Callable[[Any], str] = _event_id
    max_batch: int = 2000
    max_attempts: int = 3
    retry_backoff_seconds: float = 0.05
    # True: the runtime records ``(group, event_id)`` in processed_events in the batch's transaction and hands
    # the handler only the events not seen before. False, for a handler that is idempotent by event_id itself
    # (e.g. its insert leaves a stored key alone, in the same transaction): the runtime records nothing (one
    # write per event fewer), drops the copies repeated within the batch, and hands the handler the rest; the
    # handler returns the events it applied (None: all of them), which the metrics and ``after_commit`` see.
    claim_event_ids: bool = True
    # Called with the newly applied events once their transaction has committed (before the offset
    # commit), e.g. to wake work that reads the new state. It must not raise.
    after_commit: Callable[[Sequence[Any]], None] | None = None
    # Tables the handler deletes or overwrites personal data in (erasure requests): once a batch that applied
    # something has committed, the database is scrubbed of older copies (``Database.scrub``).
    erases_from: Sequence[str] = ()
    # Other groups of the service {group: topics} that must have applied every record already published under a
    # batch's keys before the batch is applied (set by Service for erasure: nothing orders one topic against
    # another, so a person's earlier events could otherwise arrive after their erasure and store them again).
    settles_first: Mapping[str, Sequence[str]] = field(default_factory=dict)
    settle_seconds: float = 60.0


@dataclass
class ConsumerStatus:
    assigned: list[str] = field(default_factory=list)
    lag: int | None = None
    last_event_occurred_at: datetime | None = None
    last_processed_at: datetime | None = None
    # Records this process sent to the dead-letter topic (the /metrics counter, readable in /readyz).
    dead_lettered: int = 0
    failed: str | None = None
    # Waiting for other groups to apply a batch's keys first (Subscription.settles_first).
    settling: bool = False


class _FinishBatchBeforeRevoke(ConsumerRebalanceListener):
    def __init__(self, runtime: ConsumerRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch in hand finishes (and commits its offsets) before the partitions change hands.
        async with self.runtime.batch_lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # Another member may have committed on these partitions meanwhile: the lag counts from the position again
        # until this process commits on them.
        self.runtime.forget_commits()
        self.runtime.status.assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        log.info("partitions assigned", extra={"consumer": self.runtime.subscription.group,
                                               "partitions": self.runtime.status.assigned})


# Records decoded between two yields to the event loop while the previous batch is being written.
_DECODE_SLICE = 250


@dataclass
class _Fetched:
    """One fetched batch: its records per partition (as ``getmany`` gives them, in offset order) and each
    record decoded or not, in fetch order."""

    by_partition: dict[TopicPartition, list[ConsumerRecord]]
    decoded: list[tuple[ConsumerRecord, Any]] = field(default_factory=list)
    undecodable: list[tuple[ConsumerRecord, BaseException]] = field(default_factory=list)

    @property
    def records(self) -> list[ConsumerRecord]:
        return [record for records in self.by_partition.values() for record in records]

    def of(self, partitions: set[TopicPartition]) -> _Fetched:
        """The part of the batch from these partitions."""
        if self.by_partition.keys() <= partitions:
            return self

        def kept(record: ConsumerRecord) -> bool:
            return TopicPartition(record.topic, record.partition) in partitions

        return _Fetched({tp: records for tp, records in self.by_partition.items() if tp in partitions},
                        [item for item in self.decoded if kept(item[0])],
                        [item for item in self.undecodable if kept(item[0])])

    def next_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after its last record here: what to commit once the batch is applied."""
        return {tp: records[-1].offset + 1 for tp, records in self.by_partition.items() if records}


class ConsumerRuntime:
    """The consumer loop shared by every service (STYLE.md rule 4)."""

    def __init__(
        self, subscription: Subscription, *, kafka: KafkaSettings, database: Database, publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.subscription = subscription
        self.kafka = kafka
        self.database = database
        self.publisher = publisher
        self.metrics = metrics
        self.status = ConsumerStatus()
        self.batch_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lag_checked = 0.0
        # The offsets this process committed, per partition of its current assignment (the lag is counted from
        # them: the fetch position runs ahead of what is applied while the next batch is fetched and decoded).
        self._committed: dict[TopicPartition, int] = {}
        self.dead_letter_topic = dead_letter_topic(subscription.group)

    async def start(self) -> None:
        group = self.subscription.group
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=group,
            client_id=f"{self.kafka.client_id_prefix}-{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            request_timeout_ms=max(self.kafka.request_timeout_ms, 40_000),
        )
        self._consumer.subscribe(list(self.subscription.topics), listener=_FinishBatchBeforeRevoke(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"consumer-{group}")

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, and leave the group."""
        self._stopping.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                pass  # already logged and recorded in status.failed
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        assert self._consumer is not None
        upcoming: asyncio.Task[_Fetched] | None = None
        try:
            while not self._stopping.is_set():
                fetched = await (upcoming or self._fetch())
                upcoming = None
                if fetched.by_partition:
                    # The next batch is fetched and decoded while this one is written: decoding takes the CPU
                    # while the database works (another process, or SQLite's thread without the GIL).
                    upcoming = asyncio.create_task(self._fetch())
                    async with self.batch_lock:
                        # A rebalance may have taken partitions since the fetch: their new owner reads them.
                        fetched = fetched.of(self._consumer.assignment())
                        if fetched.by_partition:
                            await self._apply_batch(fetched)
                            await self._commit_offsets(fetched.next_offsets())
                await self._update_lag()
        except _StopRequested:
            log.info("stopped while a batch kept failing; it is read again on restart",
                     extra={"consumer": self.subscription.group})
        except Exception as exc:
            self.status.failed = f"{type(exc).__name__}: {exc}"
            log.exception("consumer stopped by an error", extra={"consumer": self.subscription.group})
            raise
        finally:
            if upcoming is not None:
                # Fetched, not applied, offsets not committed: read again by whoever owns the partitions next.
                upcoming.cancel()
                with contextlib.suppress(BaseException):
                    await upcoming

    async def _fetch(self) -> _Fetched:
        """The next batch, decoded (in slices, so that a batch being written meanwhile keeps moving)."""
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=200, max_records=self.subscription.max_batch)
        fetched = _Fetched({tp: records for tp, records in batch.items() if records})
        decode = self.subscription.decode
        for n, record in enumerate(fetched.records, 1):
            try:
                fetched.decoded.append((record, decode(record.value)))
            except Exception as exc:  # undecodable: retrying cannot help
                fetched.undecodable.append((record, exc))
            if n % _DECODE_SLICE == 0:
                await asyncio.sleep(0)
        return fetched

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            await self._with_transient_retries(lambda: consumer.commit(offsets))
            self._committed.update(offsets)
        except _GROUP_MOVED_ON as exc:
            log.warning("offset commit lost to a rebalance", extra={"error": repr(exc)})

    async def _apply_batch(self, fetched: _Fetched) -> None:
        for record, error in fetched.undecodable:
            await self._dead_letter(record, error, attempts=1)
        if fetched.decoded:
            if self.subscription.settles_first:
                await self._settle([record.key for record, _ in fetched.decoded if record.key is not None])
            await self._apply_or_split(fetched.decoded)

    async def _settle(self, keys: Sequence[bytes]) -> None:
        """Wait (outside any transaction) until every group in ``settles_first`` has committed past the end its
        topics had now in the partitions these keys go to: every record published under these keys before this
        batch was read is applied first. Bounded by ``settle_seconds``; past it the batch goes ahead (logged)."""
        bootstrap = self.kafka.bootstrap_servers
        # A reader of no group sees every topic's partitions and end offsets (this group's consumer only its own).
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                  client_id=f"{self.kafka.client_id_prefix}-{self.subscription.group}-settle")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                    client_id=f"{self.kafka.client_id_prefix}-{self.subscription.group}-settle")
        self.status.settling = True
        await reader.start()
        await admin.start()
        try:
            await reader.topics()
            wanted: dict[str, set[TopicPartition]] = {}
            for group, topics in self.subscription.settles_first.items():
                for topic in topics:
                    partitions = sorted(reader.partitions_for_topic(topic) or ())
                    if partitions:
                        wanted.setdefault(group, set()).update(
                            TopicPartition(topic, partitions[_partition_of(key, len(partitions))]) for key in set(keys))
            every = [tp for tps in wanted.values() for tp in tps]
            ends = await reader.end_offsets(every) if every else {}
            deadline = time.monotonic() + self.subscription.settle_seconds
            while True:
                behind = []
                for group, tps in wanted.items():
                    committed = await admin.list_consumer_group_offsets(group, partitions=sorted(tps))
                    behind += [f"{group} {tp.topic}[{tp.partition}]" for tp in tps
                               if ends[tp] > max(committed[tp].offset if tp in committed else 0, 0)]
                if not behind:
                    return
                if time.monotonic() > deadline or self._stopping.is_set():
                    log.warning("applying before other groups caught up", extra={
                        "group": self.subscription.group, "behind": behind[:10]})
                    return
                await asyncio.sleep(0.1)
        finally:
            self.status.settling = False
            await reader.stop()
            await admin.close()

    async def _apply_or_split(self, items: Sequence[tuple[ConsumerRecord, Any]]) -> None:
        """Apply ``items`` in one transaction. When that fails for a reason other than an outage, halve them
        (in offset order) until the record at fault is alone, and dead-letter it: one poison record among n
        costs about log2(n) extra transactions, and the partition keeps moving."""
        alone = len(items) == 1
        try:
            await self._attempt(items, poison_attempts=self.subscription.max_attempts if alone else 1)
            return
        except _GaveUp as gave_up:
            if alone:
                await self._dead_letter(items[0][0], gave_up.error, attempts=gave_up.attempts)
                return
        middle = len(items) // 2
        await self._apply_or_split(items[:middle])
        await self._apply_or_split(items[middle:])

    async def _attempt(self, items: Sequence[tuple[ConsumerRecord, Any]], *, poison_attempts: int) -> None:
        """Apply ``items``, retrying: an outage without limit (it never dead-letters good events), a lock or
        conflict ``kafka.transient_retries`` times, anything else ``poison_attempts`` times in all. Before
        giving up it pings the database: if that fails too, the failure was an outage and the retries go on."""
        subscription = self.subscription
        failures = {"busy": 0, "poison": 0}
        delay = subscription.retry_backoff_seconds
        while True:
            try:
                await self._apply(items)
                return
            except Exception as exc:
                if self._stopping.is_set():
                    raise _StopRequested from exc
                kind = classify_error(exc)
                if kind != "outage":
                    failures[kind] += 1
                    self.metrics.processing_errors.labels(subscription.group).inc()
                    exhausted = (failures["busy"] > self.kafka.transient_retries
                                 or failures["poison"] >= poison_attempts)
                    if exhausted and await self._database_answers():
                        log.warning("batch failed", extra={"consumer": subscription.group, "records": len(items),
                                                           "kind": kind, "error": repr(exc)})
                        raise _GaveUp(exc, failures["busy"] + failures["poison"]) from exc
                    if exhausted:
                        kind = "outage"
                if kind == "outage":
                    log.warning("database or broker unavailable; retrying",
                                extra={"consumer": subscription.group, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _database_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.database.ping(), 5.0)
            return True
        except Exception as exc:
            log.warning("database does not answer", extra={"consumer": self.subscription.group, "error": repr(exc)})
            return False

    async def _with_transient_retries(self, attempt: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                await attempt()
                return
            except Exception as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    raise
                log.warning("database or broker unavailable; retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _apply(self, items: Sequence[tuple[ConsumerRecord, Any]]) -> None:
        subscription = self.subscription
        async with self.database.begin() as connection:
            if subscription.claim_event_ids:
                new_ids = await claim_events(
                    connection, subscription.group, (subscription.event_id(e) for _, e in items)
                )
                fresh = []
                for _, event in items:
                    event_id = subscription.event_id(event)
                    if event_id in new_ids:
                        new_ids.discard(event_id)  # a second copy inside the same batch is a duplicate too
                        fresh.append(event)
                if fresh:
                    await subscription.handle(connection, fresh)
            else:
                firsts: dict[str, Any] = {}
                for _, event in items:
                    firsts.setdefault(subscription.event_id(event), event)
                fresh = list(firsts.values())
                if fresh:
                    applied = await subscription.handle(connection, fresh)
                    if applied is not None:
                        fresh = list(applied)
        if fresh and subscription.erases_from:
            try:
                await self.database.scrub(subscription.erases_from)
            except Exception:
                # Committed all the same; the next erasure's scrub or the checkpoint at close removes the copies.
                log.exception("scrubbing after an erasure failed", extra={"consumer": subscription.group})
        if fresh and subscription.after_commit is not None:
            subscription.after_commit(fresh)
        self.metrics.events_consumed.labels(subscription.group).inc(len(items))
        self.metrics.duplicates_skipped.labels(subscription.group).inc(len(items) - len(fresh))
        self._note_progress(fresh)

    async def _dead_letter(self, record: ConsumerRecord, error: BaseException, *, attempts: int) -> None:
        headers = [
            ("x-original-topic", record.topic.encode()),
            ("x-original-partition", str(record.partition).encode()),
            ("x-original-offset", str(record.offset).encode()),
            ("x-error", f"{type(error).__name__}: {error}"[:2000].encode()),
            ("x-error-kind", classify_error(error).encode()),
            ("x-attempts", str(attempts).encode()),
            ("x-failed-at", datetime.now(UTC).isoformat().encode()),
        ]
        await self._with_transient_retries(
            lambda: self.publisher.publish(self.dead_letter_topic, record.key, record.value, headers=headers)
        )
        self.metrics.dead_letters.labels(self.subscription.group).inc()
        self.status.dead_lettered += 1
        log.error("record dead-lettered", extra={"consumer": self.subscription.group, "topic": record.topic,
                                                  "partition": record.partition, "offset": record.offset,
                                                  "error": repr(error)})

    def _note_progress(self, events: Sequence[Any]) -> None:
        now = datetime.now(UTC)
        self.status.last_processed_at = now
        times = [moment for moment in map(_occurred_at, events) if moment is not None]
        if times:
            newest = max(times)
            if self.status.last_event_occurred_at is None or newest > self.status.last_event_occurred_at:
                self.status.last_event_occurred_at = newest
                self.metrics.last_event_time.labels(self.subscription.group).set(newest.timestamp())

    def forget_commits(self) -> None:
        """The offsets committed before a rebalance no longer count for the lag."""
        self._committed.clear()

    async def _update_lag(self) -> None:
        now = time.monotonic()
        if self._consumer is None or now - self._lag_checked < 1.0:
            return
        self._lag_checked = now
        total = 0
        assignment = self._consumer.assignment()
        # Lag as Kafka's tools count it, from the committed offset: a batch fetched (the position moved) but not yet
        # applied and committed is still behind. A partition this process has not committed since it got it (or got
        # it back: ``forget_commits``) counts from its position.
        for tp in assignment:
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            done = self._committed.get(tp)
            behind = max(highwater - (done if done is not None else await self._consumer.position(tp)), 0)
            total += behind
            self.metrics.consumer_lag.labels(self.subscription.group, tp.topic, str(tp.partition)).set(behind)
        self.status.lag = total
