"""The log of changed facts (tables.fact_changes, written by triggers) as the read side follows it: which rows a
reader has not seen yet, the facts of a few persons, and pruning."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import chunks, insert
from services.segmentation.adapters.tables import (
    FACT_CHANGE_ORDER,
    counted_orders,
    fact_changes,
    fact_changes_pruned,
    profiles,
)

_PRUNED = "fact_changes"


@dataclass(frozen=True)
class ChangeCursor:
    """How far a reader has followed the log: every row at a position below ``low`` and the rows ``applied``.

    The position is the writing transaction's id on PostgreSQL, where ids are not assigned in commit order: a
    snapshot sees every transaction below its xmin that committed, and of those from xmin on, the rows listed. On
    SQLite (one writer at a time) it is seq, and ``applied`` stays empty.
    """

    low: int
    applied: frozenset[int] = field(default=frozenset())


@dataclass(frozen=True, slots=True)
class FactChange:
    seq: int
    person_key: str
    kind: int
    sign: int
    occurred_us: int
    total_cents: int | None


def _position(connection: AsyncConnection) -> Any:
    return fact_changes.c.xid if connection.dialect.name == "postgresql" else fact_changes.c.seq


@dataclass(frozen=True, slots=True)
class LogSnapshot:
    """Where the log stands for a snapshot read: its cursor position, and below which rows may be pruned."""

    low: int
    pruned: int


async def log_snapshot(connection: AsyncConnection) -> LogSnapshot:
    """The first statement of a snapshot read that follows the log (``Database.read(snapshot=True)``). On PostgreSQL
    it also turns JIT off for the transaction: the moves' join of hundreds of ranges with the order-time index is
    estimated at millions of rows and would be compiled (about 60 ms) to find a few in 2 ms."""
    pruned = (select(fact_changes_pruned.c.position).where(fact_changes_pruned.c.scope == _PRUNED)
              .scalar_subquery())
    if connection.dialect.name == "postgresql":
        query = select(literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint"),
                       func.set_config("jit", "off", True), pruned)
        low, _, pruned_below = (await connection.execute(query)).one()
        return LogSnapshot(int(low), int(pruned_below or 0))
    # AUTOINCREMENT's high-water mark: the next row's seq is above it even when every row was pruned.
    used = literal_column("(SELECT seq FROM sqlite_sequence WHERE name = 'fact_changes')")
    used_seq, pruned_below = (await connection.execute(select(used, pruned))).one()
    return LogSnapshot(int(used_seq or 0) + 1, int(pruned_below or 0))


async def changes_since(connection: AsyncConnection, cursor: ChangeCursor | None,
                        snapshot: LogSnapshot) -> tuple[list[FactChange], ChangeCursor]:
    """The rows committed after ``cursor`` (None: none, only the cursor of this snapshot), in seq order, and the
    cursor of this transaction's snapshot (PostgreSQL: REPEATABLE READ, so that the facts read next agree)."""
    position = _position(connection)
    low = snapshot.low
    since = low if cursor is None else min(cursor.low, low)
    query = (select(fact_changes.c.seq, fact_changes.c.person_key, fact_changes.c.kind, fact_changes.c.sign,
                    fact_changes.c.occurred_us, fact_changes.c.total_cents, position.label("position"))
             .where(position >= since).order_by(fact_changes.c.seq))
    new: list[FactChange] = []
    applied = []
    for seq, person, kind, sign, occurred_us, total_cents, row_position in await connection.execute(query):
        if cursor is not None and row_position >= cursor.low and seq not in cursor.applied:
            new.append(FactChange(seq, person, kind, sign, occurred_us, total_cents))
        if row_position >= low:
            applied.append(seq)
    return new, ChangeCursor(low, frozenset(applied))


async def log_position(connection: AsyncConnection) -> int:
    """A position every row written from now on is at or above (what ``prune`` later takes)."""
    if connection.dialect.name == "postgresql":
        return int((await connection.execute(text("SELECT pg_current_xact_id()::text::bigint"))).scalar_one())
    return (await log_snapshot(connection)).low


async def prune(connection: AsyncConnection, below: int) -> None:
    """Delete the rows at positions below ``below`` (readers that have not followed that far count again)."""
    await connection.execute(delete(fact_changes).where(_position(connection) < below))
    statement = insert(connection, fact_changes_pruned).values(scope=_PRUNED, position=below)
    await connection.execute(statement.on_conflict_do_update(index_elements=["scope"], set_={"position": below}))


async def pseudonymize_changes(connection: AsyncConnection, pseudonyms: dict[str, str]) -> None:
    """Erasure: the log keeps an erased person's changes (readers still need them) under their pseudonym."""
    for person, pseudonym in pseudonyms.items():
        await connection.execute(fact_changes.update().where(fact_changes.c.person_key == person)
                                 .values(person_key=pseudonym))


async def person_facts(connection: AsyncConnection, persons: Collection[str],
                       ) -> dict[str, tuple[int | None, list[tuple[int, int]]]]:
    """Per person: the time of their first event (None without a profile) and their counted orders
    ``(occurred_us, total_cents)``."""
    facts: dict[str, tuple[int | None, list[tuple[int, int]]]] = {}
    orders: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    first_seen: dict[str, int] = {}
    for batch in chunks(persons):
        rows = await connection.execute(select(profiles.c.person_key, profiles.c.first_seen_us)
                                        .where(profiles.c.person_key.in_(batch)))
        first_seen.update((person, seen) for person, seen in rows)
        rows = await connection.execute(
            select(counted_orders.c.person_key, counted_orders.c.occurred_us, counted_orders.c.total_cents)
            .where(counted_orders.c.person_key.in_(batch)))
        for person, occurred_us, cents in rows:
            orders[person].append((occurred_us, cents))
    for person in persons:
        facts[person] = (first_seen.get(person), orders.get(person, []))
    return facts


def facts_before(changes: Sequence[FactChange], first_seen_us: int | None,
                 orders: list[tuple[int, int]]) -> tuple[int | None, list[tuple[int, int]]]:
    """One person's facts as they were before ``changes`` (theirs, in seq order) were made."""
    before = list(orders)
    for change in reversed(changes):
        if change.kind == FACT_CHANGE_ORDER:
            row = (change.occurred_us, change.total_cents or 0)
            if change.sign > 0:
                before.remove(row)
            else:
                before.append(row)
        else:
            first_seen_us = None if change.sign > 0 else change.occurred_us
    return first_seen_us, before
