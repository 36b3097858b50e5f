"""Segment membership changes: evaluate, diff against the stored membership, queue, publish.

One evaluation runs at a time (PostgreSQL: an advisory lock; SQLite: the write lock BEGIN IMMEDIATE
takes), so a change is decided once. Its record is committed with the new membership in the outbox
table and published afterwards; a crash between the broker's acknowledgement and the outbox delete
re-sends the record with the same ``change_id`` (consumers deduplicate on it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.background import BackgroundLoop, Clock
from libs.common.db import Database
from libs.common.events import epoch_micros, format_timestamp, from_epoch_micros
from libs.common.kafka import SEGMENTS_TOPIC, Publisher
from libs.common.metrics import Metrics
from services.segmentation.adapters.fact_changes import log_position
from services.segmentation.adapters.fact_changes import prune as prune_fact_changes
from services.segmentation.adapters.segments import (
    builtin_membership_changes,
    delete_rule_segment,
    forget_changes,
    forget_legacy_changes,
    forget_removed_segments,
    last_round,
    legacy_queued_changes,
    lock_membership,
    queued_changes,
    remember_published_round,
    remember_round,
    round_candidates,
    rule_segments,
    segment_names,
    store_everyones_builtin_changes,
    store_memberships,
)
from services.segmentation.decoding import CustomerEvent
from services.segmentation.domain.customers import FiguresAt
from services.segmentation.domain.rfm import RfmCuts
from services.segmentation.domain.rounds import Round, order_windows
from services.segmentation.population import (
    Thresholds,
    builtin_memberships,
    evaluate_segments,
    population_cuts,
)
from services.segmentation.segments import SegmentDefinition, membership_ids, membership_key
from services.segmentation.settings import MembershipSettings

log = logging.getLogger(__name__)
ENTERED, EXITED = "entered", "exited"
PENDING_BATCH = 5000
# Rounds of everyone look only at the customers who can have changed since the last (domain/rounds.py); at
# least this often one looks at every customer anyway, for facts no process reported (a replica that died
# between its commit and its evaluation and was not restarted).
COMPLETE_ROUND_EVERY = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)
# With more persons with new facts than this, looking at everyone costs less (a million customers on
# PostgreSQL: 100,000 named persons about 2 s, everyone about 4 s).
_CHANGED_AT_MOST = 200_000
# How long the log of changed facts keeps a row (at least; pruned on rounds of everyone).
FACT_CHANGES_KEPT = timedelta(minutes=10)


def change_records(rows: Sequence[Any], segments: Mapping[str, SegmentDefinition]) -> list[tuple[bytes, bytes]]:
    """``(person_key, payload)`` of the records on shoploop.segments.v1 (docs/segmentation.md) of queued outbox rows
    (``seq, evaluation, as_of_us, person_key, segment_ids_before, segment_ids_after``), in order: per row the
    exits, then the entries, each in segment id order (an exit of a segment ``segments`` does not name is left out).

    A record's ``change_id`` is its row's evaluation (64 random bits drawn once per evaluation), the row's seq and
    the record's place in the row, 32 hex digits: rendering a row again (a re-send after a crash) gives the same
    ids, and no two records share one. A first evaluation renders millions: payloads are put together from parts
    made once per (moment) and (change, segment).
    """
    tails: dict[int, bytes] = {}
    middles: dict[tuple[str, str], bytes] = {}
    transitions: dict[tuple[str, str], list[bytes]] = {}
    records = []
    for seq, evaluation, as_of_us, person_key, before, after in rows:
        parts = transitions.get((before, after))
        if parts is None:
            parts = transitions[before, after] = []
            for change, segment_id in _changes(before, after, segments):
                middle = middles.get((change, segment_id))
                if middle is None:
                    segment = segments[segment_id]
                    fields = orjson.dumps({"change": change, "segment_id": segment_id, "segment_name": segment.name,
                                           "segment_kind": segment.kind.value})
                    middle = middles[change, segment_id] = b'",' + fields[1:-1] + b',"person_key":'
                parts.append(middle)
        tail = tails.get(as_of_us)
        if tail is None:
            tail = tails[as_of_us] = (b',"as_of":' + orjson.dumps(format_timestamp(from_epoch_micros(as_of_us)))
                                      + b"}")
        key = person_key.encode()
        person = orjson.dumps(person_key)
        row_id = f"{evaluation:016x}{seq:012x}"
        for n, middle in enumerate(parts):
            records.append((key, b"".join((b'{"change_id":"', f"{row_id}{n:04x}".encode(), middle, person, tail))))
    return records


def _changes(before: str, after: str, segments: Mapping[str, SegmentDefinition]) -> list[tuple[str, str]]:
    """``(change, segment id)`` of a person whose membership key went from ``before`` to ``after``: exits first (a
    person moving from one stage to the next leaves before entering), of the segments ``segments`` names (a
    removed rule segment's name stays known until its exits are published: ``removed_segments``)."""
    was, now = membership_ids(before), membership_ids(after)
    return [*((EXITED, segment_id) for segment_id in sorted(was - now) if segment_id in segments),
            *((ENTERED, segment_id) for segment_id in sorted(now - was) if segment_id in segments)]


def _evaluation() -> int:
    """The id of one evaluation's rows: 63 random bits, so that no two evaluations (of any database) share ids."""
    return int.from_bytes(os.urandom(8), "big") >> 1


async def sync_membership(connection: AsyncConnection, as_of: datetime, thresholds: Thresholds,
                          persons: Collection[str] | None = None, *, changed: Collection[str] = (),
                          complete: bool = True, complete_every: timedelta = COMPLETE_ROUND_EVERY,
                          ) -> tuple[int, int]:
    """Re-evaluate the named persons (or everyone) at as_of and queue the changes.

    Everyone, not ``complete``: when the last round of everyone allows it, only the customers whose built-in
    segments can have changed since (domain/rounds.py), plus ``changed``, the persons with new facts since
    then (only the caller knows them); every customer when the last round that did is ``complete_every`` old.
    With rule segments every round looks at everyone.
    Returns (persons evaluated, persons whose membership changed: outbox rows queued, one to a few records each;
    how many records is known when they are published, not counted here).
    """
    await lock_membership(connection)
    definitions = await rule_segments(connection)
    evaluation, as_of_us = _evaluation(), epoch_micros(as_of)
    if definitions:
        evaluated, rows = await _with_rule_segments(connection, as_of, thresholds, definitions, persons)
        changed_persons = await store_memberships(connection, evaluation, as_of_us, rows)
        if persons is None:
            await remember_round(connection, None)
    else:
        figures_at = thresholds.at(as_of)
        # Ranks against the whole RFM population: its quintile cuts come from counts the database makes.
        cuts = await population_cuts(connection, figures_at, monetary=False)
        if persons is not None:
            evaluated, rows = await builtin_membership_changes(connection, figures_at, cuts, persons)
            changed_persons = await store_memberships(connection, evaluation, as_of_us, rows)
        else:
            evaluated, changed_persons = await _round_of_everyone(
                connection, figures_at, cuts, thresholds, evaluation, changed=changed, complete=complete,
                complete_every=complete_every)
    if persons is None:
        await remember_published_round(connection, as_of_us)
    return evaluated, changed_persons


async def _round_of_everyone(connection: AsyncConnection, figures_at: FiguresAt, cuts: RfmCuts,
                             thresholds: Thresholds, evaluation: int, *, changed: Collection[str], complete: bool,
                             complete_every: timedelta) -> tuple[int, int]:
    as_of_us = figures_at.as_of_us
    current = Round(as_of_us, cuts.recency_days, cuts.frequency, as_of_us)
    previous = None if complete else await last_round(connection)
    windows = None
    if (previous is not None and as_of_us - previous.complete_as_of_us <= complete_every // _MICROSECOND
            and len(changed) <= _CHANGED_AT_MOST):
        windows = order_windows(previous, current, thresholds.lifecycle)
    if previous is None or windows is None:
        evaluated, changed_persons = await store_everyones_builtin_changes(connection, figures_at, cuts, evaluation)
    else:
        current = replace(current, complete_as_of_us=previous.complete_as_of_us)
        candidates = round_candidates(windows, previous.as_of_us, as_of_us)
        evaluated, rows = await builtin_membership_changes(connection, figures_at, cuts, candidates)
        if changed:
            more, more_rows = await builtin_membership_changes(connection, figures_at, cuts, changed)
            # A person in both parts comes twice, decided alike.
            evaluated, rows = evaluated + more, list({row[0]: row for row in [*rows, *more_rows]}.values())
        changed_persons = await store_memberships(connection, evaluation, figures_at.as_of_us, rows)
    await remember_round(connection, current)
    return evaluated, changed_persons


async def _with_rule_segments(connection: AsyncConnection, as_of: datetime, thresholds: Thresholds,
                              definitions: Sequence[SegmentDefinition], persons: Collection[str] | None,
                              ) -> tuple[int, list[tuple[str, str, str | None]]]:
    """Built-in and rule segments decided in Python from whole figures (rules can read any field)."""
    standings = await builtin_memberships(connection, as_of, thresholds, persons, stored_segments=True)
    rule_ids = {segment.segment_id for segment in definitions}
    evaluation = await evaluate_segments(connection, as_of, thresholds, definitions, persons)
    rule_members = {person: ids & rule_ids for person, ids in evaluation.memberships.items()}
    rows: list[tuple[str, str, str | None]] = []
    builtin_keys: dict[tuple[str, ...], str] = {}
    for person, ids, stored in standings:
        rules = rule_members.get(person)
        if rules:
            key = membership_key([*ids, *rules])
        elif (key := builtin_keys.get(ids)) is None:
            key = builtin_keys[ids] = membership_key(ids)
        if key != (stored or ""):
            rows.append((person, key, stored))
    return sum(1 for _, ids, _ in standings if ids), rows


async def remove_rule_segment(connection: AsyncConnection, segment: SegmentDefinition, as_of: datetime) -> bool:
    """Delete a rule segment; its members exit it (records queued like any other change). False if unknown."""
    await lock_membership(connection)
    changes = await delete_rule_segment(connection, segment.segment_id)
    if changes is None:
        return False
    await store_memberships(connection, _evaluation(), epoch_micros(as_of), changes)
    return True


async def publish_queued_changes(database: Database, publisher: Publisher, *, batch: int) -> int:
    """Publish queued change records in order (first any an older version queued), deleting each batch of outbox
    rows once the broker acknowledged its records. Returns the records published."""
    published = 0
    while True:
        async with database.begin() as connection:
            legacy = await legacy_queued_changes(connection, batch)
            if legacy:
                await publisher.publish_many(SEGMENTS_TOPIC, [(row.person_key.encode(), row.payload.encode())
                                                              for row in legacy])
                await forget_legacy_changes(connection, [row.seq for row in legacy])
                published += len(legacy)
                continue
            rows = await queued_changes(connection, batch)
            if not rows:
                if published:
                    await forget_removed_segments(connection)
                return published
            records = change_records(rows, await segment_names(connection))
            await publisher.publish_many(SEGMENTS_TOPIC, records)
            await forget_changes(connection, [row.seq for row in rows])
        published += len(records)


class MembershipScheduler(BackgroundLoop):
    """Keeps stored membership current: the persons with new facts within moments, everyone every interval.

    The persons with new facts are kept in memory (the consumer reports them once their transaction has
    committed). A process that dies with some of them unevaluated loses nothing: the first round after a
    start looks at every customer. Later rounds of everyone look at the persons with new facts since the
    last one and at those whom time can have moved (``sync_membership``).
    """

    def __init__(self, database: Database, publisher: Publisher, *, thresholds: Thresholds,
                 settings: MembershipSettings, clock: Clock, metrics: Metrics,
                 events_lag: Callable[[], int] = lambda: 0) -> None:
        super().__init__("segmentation-membership", database=database, publisher=publisher, clock=clock)
        self.thresholds = thresholds
        self.settings = settings
        self.events_lag = events_lag
        self._pending: set[str] = set()
        self._changed: set[str] = set()  # persons with new facts since the last round of everyone
        self._looked_at_everyone = False
        self._log_marks: list[tuple[float, int]] = []  # (monotonic time, log position then), oldest first
        self._in_flight = 0
        self._next_full = 0.0
        registry = metrics.registry
        self._changes = Counter("shoploop_segment_changes_total", "Segment enter/exit records published",
                                registry=registry)
        self._waiting = Gauge("shoploop_segment_pending_persons",
                              "Persons with new facts not yet evaluated (or being evaluated)", registry=registry)
        self._duration = Histogram("shoploop_segment_evaluation_seconds", "Membership evaluation time", ["scope"],
                                   registry=registry, buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60))

    def facts_committed(self, events: Sequence[CustomerEvent]) -> None:
        """The consumer's after-commit hook: evaluate these events' persons soon."""
        self._changed.update(event.person_key for event in events)
        if self.settings.evaluate_after_events:
            self._pending.update(event.person_key for event in events)
            self._waiting.set(len(self._pending) + self._in_flight)
            self._wake.set()

    def request_full_evaluation(self) -> None:
        """Evaluate everyone now (a new rule segment enters its members without waiting for the interval)."""
        self._next_full = 0.0
        self._wake.set()

    async def run_once(self, *, full: bool) -> int:
        """One evaluation (everyone, or the persons with new facts) and the publishing of its changes."""
        pending, self._pending = self._pending, set()
        self._in_flight = len(pending)
        # Every evaluation ranks against the whole RFM population anyway: with this many persons, do everyone.
        full = full or len(pending) > PENDING_BATCH
        changed: set[str] = set()
        if full:
            changed, self._changed = self._changed, set()
        if pending or full:
            started = time.monotonic()
            as_of = self.clock()
            try:
                async with self.database.begin() as connection:
                    await sync_membership(connection, as_of, self.thresholds, None if full else pending,
                                          changed=changed | pending, complete=not self._looked_at_everyone)
            except BaseException:
                self._pending |= pending
                self._changed |= changed
                raise
            finally:
                self._in_flight = 0
                self._waiting.set(len(self._pending))
            if full:
                self._looked_at_everyone = True
            self._duration.labels("all" if full else "pending").observe(time.monotonic() - started)
        if full:
            await self._prune_fact_changes()
        published = await publish_queued_changes(self.database, self.publisher,
                                                 batch=self.settings.publish_batch)
        self._changes.inc(published)
        return published

    async def _prune_fact_changes(self) -> None:
        """Delete the change log's rows older than ``FACT_CHANGES_KEPT``: a reader that has not followed them since
        (population_state.py) counts the population again."""
        async with self.database.begin() as connection:
            now = time.monotonic()
            old = [position for at, position in self._log_marks if now - at >= FACT_CHANGES_KEPT.total_seconds()]
            if old:
                await prune_fact_changes(connection, old[-1])
                self._log_marks = self._log_marks[len(old):]
            self._log_marks.append((now, await log_position(connection)))

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if time.monotonic() < self._next_full:
                if self.events_lag() > self.settings.defer_while_lag_above:
                    # Far behind the topic: let the consumer catch up first; its persons pile up and are then
                    # evaluated together (the round of everyone still comes every interval).
                    await self._sleep(min(1.0, self._next_full - time.monotonic()))
                    continue
                # Gather the persons of the next few consumer batches into this evaluation.
                await asyncio.sleep(min(self.settings.gather_seconds, self._next_full - time.monotonic()))
                if self._stopping.is_set():
                    break
            full = time.monotonic() >= self._next_full
            try:
                if full:
                    self._next_full = time.monotonic() + self.settings.evaluation_interval_seconds
                await self.run_once(full=full)
                self._succeeded()
            except Exception:
                log.exception("segment membership evaluation failed; retrying")
                if full:
                    self._next_full = 0.0
                await self._wait_after_failure()
                continue
            if not self._pending:
                await self._sleep(max(self._next_full - time.monotonic(), 0.0))
