"""Segment membership changes: evaluate, diff against the stored membership, queue, publish.

One evaluation runs at a time (PostgreSQL: an advisory lock; SQLite: the write lock BEGIN IMMEDIATE
takes), so a change is decided once. Its record is committed with the new membership in the outbox
table and published afterwards; a crash between the broker's acknowledgement and the outbox delete
re-sends the record with the same ``change_id`` (consumers deduplicate on it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

import orjson
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database
from libs.common.events import epoch_micros, format_timestamp
from libs.common.kafka import SEGMENTS_TOPIC, Publisher
from libs.common.metrics import Metrics
from services.segmentation.adapters.facts import claim_pending, clear_pending
from services.segmentation.adapters.segments import (
    apply_membership_changes,
    forget_changes,
    lock_membership,
    queued_changes,
    rule_segments,
    stored_memberships,
)
from services.segmentation.population import Thresholds, evaluate_segments
from services.segmentation.segments import BUILTIN_BY_ID, SegmentDefinition
from services.segmentation.settings import MembershipSettings

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
ENTERED, EXITED = "entered", "exited"
PENDING_BATCH = 5000


def change_record(change: str, segment: SegmentDefinition, person_key: str, as_of: datetime) -> tuple[str, str, bytes]:
    """``(change_id, person_key, payload)`` of one record on shoploop.segments.v1 (docs/segmentation.md)."""
    change_id = uuid.uuid4().hex
    payload = orjson.dumps({
        "change_id": change_id, "change": change, "segment_id": segment.segment_id, "segment_name": segment.name,
        "segment_kind": segment.kind.value, "person_key": person_key, "as_of": format_timestamp(as_of),
    })
    return change_id, person_key, payload


async def sync_membership(connection: AsyncConnection, as_of: datetime, thresholds: Thresholds, *,
                          pending_only: bool) -> tuple[int, int]:
    """Re-evaluate everyone (or the persons with new facts) at as_of and queue the changes.

    Returns (persons evaluated, changes queued).
    """
    await lock_membership(connection)
    # Under READ COMMITTED a concurrent consumer commit can land between two reads below; the persons it
    # touched keep their pending mark (their token changed) and are evaluated again right after.
    pending = await claim_pending(connection, PENDING_BATCH + 1 if pending_only else None)
    if pending_only and not pending:
        return 0, 0
    if pending_only and len(pending) > PENDING_BATCH:
        # Every evaluation loads the whole RFM population anyway: with this many persons, do everyone.
        pending, pending_only = await claim_pending(connection), False
    scope: Collection[str] | None = list(pending) if pending_only else None
    definitions = await rule_segments(connection)
    evaluation = await evaluate_segments(connection, as_of, thresholds, definitions, scope)
    desired = {(segment_id, person) for person, ids in evaluation.memberships.items() for segment_id in ids}
    stored = await stored_memberships(connection, scope)
    by_id = {**BUILTIN_BY_ID, **{segment.segment_id: segment for segment in definitions}}
    exited = sorted(stored - desired, key=lambda pair: (pair[1], pair[0]))
    entered = sorted(desired - stored, key=lambda pair: (pair[1], pair[0]))
    # Exits first: a person moving from one stage to the next leaves before entering.
    records = [change_record(EXITED, by_id[s], p, as_of) for s, p in exited if s in by_id]
    records += [change_record(ENTERED, by_id[s], p, as_of) for s, p in entered]
    await apply_membership_changes(connection, entered, exited, epoch_micros(as_of), records)
    await clear_pending(connection, pending)
    evaluated = len(scope) if scope is not None else len(evaluation.population.customers)
    return evaluated, len(records)


async def publish_queued_changes(database: Database, publisher: Publisher, *, batch: int) -> int:
    """Publish queued change records in order, deleting each batch once the broker acknowledged it."""
    published = 0
    while True:
        async with database.begin() as connection:
            rows = await queued_changes(connection, batch)
            if not rows:
                return published
            await publisher.publish_many(SEGMENTS_TOPIC, [(row.person_key.encode(), row.payload.encode())
                                                          for row in rows])
            await forget_changes(connection, [row.seq for row in rows])
        published += len(rows)


class MembershipScheduler:
    """Keeps stored membership current: the persons with new facts within moments, everyone every interval."""

    def __init__(self, database: Database, publisher: Publisher, *, thresholds: Thresholds,
                 settings: MembershipSettings, clock: Clock, metrics: Metrics) -> None:
        self.database = database
        self.publisher = publisher
        self.thresholds = thresholds
        self.settings = settings
        self.clock = clock
        self.last_full_evaluation: datetime | None = None
        self.full_evaluations = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_full = 0.0
        self._connected = False
        registry = metrics.registry
        self._changes = Counter("shoploop_segment_changes_total", "Segment enter/exit records published",
                                registry=registry)
        self._duration = Histogram("shoploop_segment_evaluation_seconds", "Membership evaluation time", ["scope"],
                                   registry=registry, buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60))

    def notify(self) -> None:
        """New facts were applied: evaluate their persons soon."""
        if self.settings.evaluate_after_events:
            self._wake.set()

    def request_full_evaluation(self) -> None:
        """Evaluate everyone now (a new rule segment enters its members without waiting for the interval)."""
        self._next_full = 0.0
        self._wake.set()

    def start(self, ready: Callable[[], Awaitable[None]]) -> None:
        self._task = asyncio.create_task(self._run(ready), name="segmentation-membership")

    async def stop(self) -> None:
        """Let the evaluation in hand finish and commit, then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is None:
            return
        if not self._connected:
            self._task.cancel()  # still waiting for the broker: nothing in hand
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def run_once(self, *, full: bool) -> int:
        """One evaluation (everyone, or the persons with new facts) and the publishing of its changes."""
        scope = "all" if full else "pending"
        started = time.monotonic()
        as_of = self.clock()
        async with self.database.begin() as connection:
            await sync_membership(connection, as_of, self.thresholds, pending_only=not full)
        if full:
            self.last_full_evaluation = as_of
            self.full_evaluations += 1
        self._duration.labels(scope).observe(time.monotonic() - started)
        published = await publish_queued_changes(self.database, self.publisher,
                                                 batch=self.settings.publish_batch)
        self._changes.inc(published)
        return published

    async def _run(self, ready: Callable[[], Awaitable[None]]) -> None:
        await ready()
        self._connected = True
        delay = 0.2
        while not self._stopping.is_set():
            full = time.monotonic() >= self._next_full
            try:
                if full:
                    self._next_full = time.monotonic() + self.settings.evaluation_interval_seconds
                await self.run_once(full=full)
                delay = 0.2
            except Exception:
                log.exception("segment membership evaluation failed; retrying")
                if full:
                    self._next_full = 0.0
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            await self._sleep(min(self.settings.pending_poll_seconds,
                                  max(self._next_full - time.monotonic(), 0.0)))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
            # Events arrive in bursts: gather the burst (and let its transaction commit) before evaluating.
            await asyncio.sleep(0.02)
        except TimeoutError:
            pass
        self._wake.clear()
