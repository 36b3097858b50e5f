"""Customer facts: batched writes from the consumer, and the reads figures are computed from."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Select, and_, case, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import insert
from libs.common.events import Event, epoch_micros, from_epoch_micros
from services.segmentation.adapters.tables import (
    PERSONAL_TABLES,
    customer_events,
    customer_orders,
    customer_traits,
    pending_evaluations,
    profiles,
)
from services.segmentation.domain.customers import OrderRecord, OrderStatus

# Bounded IN lists keep every statement well under SQLite's bound-parameter limit.
_CHUNK = 900


def chunks(values: Iterable[str], size: int = _CHUNK) -> Iterator[list[str]]:
    """``values`` in lists of at most ``size``."""
    batch: list[str] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _cents(amount: Decimal | None) -> int | None:
    return None if amount is None else int(amount.scaleb(2))


def _money(cents: int | None) -> Decimal:
    return Decimal(cents or 0).scaleb(-2)


@dataclass(slots=True)
class _Seen:
    """One person's first and last event within a batch, ties broken by event_id."""

    first: tuple[int, str]
    source: str
    last: tuple[int, str]

    def see(self, moment: tuple[int, str], source: str) -> None:
        if moment < self.first:
            self.first, self.source = moment, source
        if moment > self.last:
            self.last = moment


def _bytewise(connection: AsyncConnection, column: Any) -> Any:
    # SPEC ties are broken by event_id in code-point order: PostgreSQL's default collation is not that.
    return column.collate("C") if connection.dialect.name == "postgresql" else column


async def record_events(connection: AsyncConnection, events: Sequence[Event], *, token: str) -> set[str]:
    """Store a batch of new events as facts, one statement per table; return the persons touched."""
    seen: dict[str, _Seen] = {}
    event_rows, order_rows, trait_rows = [], [], []
    for event in events:
        event_id = event.event_id or ""
        person = event.person_key
        occurred_us = epoch_micros(event.occurred_at)
        moment = (occurred_us, event_id)
        known = seen.get(person)
        if known is None:
            seen[person] = _Seen(moment, event.channel.source, moment)
        else:
            known.see(moment, event.channel.source)
        event_rows.append({"event_id": event_id, "person_key": person, "type": event.type,
                           "occurred_us": occurred_us})
        if event.order is not None:
            order = event.order
            order_rows.append({
                "event_id": event_id, "person_key": person, "order_id": order.order_id, "status": order.status,
                "occurred_us": occurred_us, "total_cents": _cents(order.total),
                "refund_cents": _cents(order.refund_amount),
            })
        if event.traits is not None:
            trait_rows.append({"event_id": event_id, "person_key": person, "occurred_us": occurred_us,
                               "traits": orjson.dumps(event.traits).decode()})
    for table, rows in ((customer_events, event_rows), (customer_orders, order_rows),
                        (customer_traits, trait_rows)):
        if rows:
            await connection.execute(insert(connection, table).on_conflict_do_nothing(index_elements=["event_id"]),
                                     rows)
    if seen:
        await _upsert_profiles(connection, seen)
        statement = insert(connection, pending_evaluations)
        await connection.execute(
            statement.on_conflict_do_update(index_elements=["person_key"], set_={"token": statement.excluded.token}),
            [{"person_key": person, "token": token} for person in seen],
        )
    return set(seen)


async def _upsert_profiles(connection: AsyncConnection, seen: dict[str, _Seen]) -> None:
    statement = insert(connection, profiles)
    new, old = statement.excluded, profiles.c
    earlier = or_(new.first_seen_us < old.first_seen_us,
                  and_(new.first_seen_us == old.first_seen_us,
                       _bytewise(connection, new.first_event_id) < _bytewise(connection, old.first_event_id)))
    later = or_(new.last_seen_us > old.last_seen_us,
                and_(new.last_seen_us == old.last_seen_us,
                     _bytewise(connection, new.last_event_id) > _bytewise(connection, old.last_event_id)))
    statement = statement.on_conflict_do_update(
        index_elements=["person_key"],
        set_={
            "first_seen_us": case((earlier, new.first_seen_us), else_=old.first_seen_us),
            "first_event_id": case((earlier, new.first_event_id), else_=old.first_event_id),
            "acquisition_source": case((earlier, new.acquisition_source), else_=old.acquisition_source),
            "last_seen_us": case((later, new.last_seen_us), else_=old.last_seen_us),
            "last_event_id": case((later, new.last_event_id), else_=old.last_event_id),
        },
    )
    rows = [
        {"person_key": person, "first_seen_us": s.first[0], "first_event_id": s.first[1],
         "acquisition_source": s.source, "last_seen_us": s.last[0], "last_event_id": s.last[1]}
        for person, s in seen.items()
    ]
    await connection.execute(statement, rows)


async def erase_persons(connection: AsyncConnection, persons: Collection[str]) -> None:
    """Delete every row naming these persons (SPEC.md "Customers", erasure)."""
    for batch in chunks(persons):
        for table in PERSONAL_TABLES:
            await connection.execute(delete(table).where(table.c.person_key.in_(batch)))


@dataclass(frozen=True, slots=True)
class ProfileRow:
    person_key: str
    first_seen_us: int
    acquisition_source: str
    last_seen_us: int


async def _in_chunks(connection: AsyncConnection, query: Select[Any], column: Any,
                     persons: Collection[str] | None) -> list[Any]:
    if persons is None:
        return list((await connection.execute(query)).all())
    rows: list[Any] = []
    for batch in chunks(persons):
        rows.extend((await connection.execute(query.where(column.in_(batch)))).all())
    return rows


async def known_profiles(connection: AsyncConnection, as_of_us: int,
                         persons: Collection[str] | None = None) -> dict[str, ProfileRow]:
    """Persons with an event at or before as_of (the population at as_of)."""
    query = select(profiles.c.person_key, profiles.c.first_seen_us, profiles.c.acquisition_source,
                   profiles.c.last_seen_us).where(profiles.c.first_seen_us <= as_of_us)
    rows = await _in_chunks(connection, query, profiles.c.person_key, persons)
    return {row.person_key: ProfileRow(*row) for row in rows}


async def last_seen_at_or_before(connection: AsyncConnection, as_of_us: int,
                                 persons: Collection[str]) -> dict[str, int]:
    """The latest event time <= as_of of persons who also have later events."""
    query = (select(customer_events.c.person_key, func.max(customer_events.c.occurred_us))
             .where(customer_events.c.occurred_us <= as_of_us).group_by(customer_events.c.person_key))
    return dict(await _in_chunks(connection, query, customer_events.c.person_key, persons))


async def completed_order_records(
    connection: AsyncConnection, as_of_us: int, *, persons: Collection[str] | None = None,
    completed_since_us: int | None = None,
) -> list[OrderRecord]:
    """Completed order events up to as_of, of every order_id that some selected completed event names.

    Selected: the persons' events, or those after ``completed_since_us``, or all. Every completed
    event of a selected order_id is returned, so counting (earliest event per order) stays exact.
    """
    rows = customer_orders.c
    completed = and_(rows.status == OrderStatus.COMPLETED.value, rows.occurred_us <= as_of_us)
    query = select(rows.event_id, rows.person_key, rows.order_id, rows.occurred_us, rows.total_cents)
    if persons is None and completed_since_us is None:
        result = (await connection.execute(query.where(completed))).all()
    else:
        selected = select(rows.order_id).where(completed)
        if completed_since_us is not None:
            selected = selected.where(rows.occurred_us > completed_since_us)
        if persons is None:
            result = (await connection.execute(query.where(completed, rows.order_id.in_(selected)))).all()
        else:
            result, seen = [], set()
            for batch in chunks(persons):
                chunk_query = query.where(completed, rows.order_id.in_(selected.where(rows.person_key.in_(batch))))
                for row in (await connection.execute(chunk_query)).all():
                    if row.event_id not in seen:
                        seen.add(row.event_id)
                        result.append(row)
    return [
        OrderRecord(row.event_id, row.person_key, row.order_id, OrderStatus.COMPLETED,
                    from_epoch_micros(row.occurred_us), _money(row.total_cents))
        for row in result
    ]


async def event_type_counts(
    connection: AsyncConnection, event_type: str, after_us: int | None, as_of_us: int,
    persons: Collection[str] | None = None,
) -> dict[str, int]:
    """Events of one type per person in (after, as_of] (from the beginning when ``after_us`` is None)."""
    rows = customer_events.c
    query = select(rows.person_key, func.count()).where(rows.type == event_type, rows.occurred_us <= as_of_us)
    if after_us is not None:
        query = query.where(rows.occurred_us > after_us)
    query = query.group_by(rows.person_key)
    return dict(await _in_chunks(connection, query, rows.person_key, persons))


async def merged_traits(connection: AsyncConnection, as_of_us: int,
                        persons: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """identify traits up to as_of, later calls overriding earlier ones key by key (Segment semantics)."""
    rows = customer_traits.c
    query = select(rows.person_key, rows.occurred_us, rows.event_id, rows.traits).where(rows.occurred_us <= as_of_us)
    found = await _in_chunks(connection, query, rows.person_key, persons)
    merged: dict[str, dict[str, Any]] = {}
    for row in sorted(found, key=lambda row: (row.occurred_us, row.event_id)):
        merged.setdefault(row.person_key, {}).update(orjson.loads(row.traits))
    return merged


async def claim_pending(connection: AsyncConnection, limit: int | None = None) -> dict[str, str]:
    """Persons waiting for re-evaluation, with the token their latest facts left."""
    query = select(pending_evaluations.c.person_key, pending_evaluations.c.token).limit(limit)
    return dict((await connection.execute(query)).all())


async def clear_pending(connection: AsyncConnection, claimed: dict[str, str]) -> None:
    """Forget the persons evaluated, unless newer facts arrived for them meanwhile (their token changed)."""
    by_token: dict[str, list[str]] = {}
    for person, token in claimed.items():
        by_token.setdefault(token, []).append(person)
    table = pending_evaluations
    for token, persons in by_token.items():
        for batch in chunks(persons):
            await connection.execute(delete(table).where(table.c.token == token, table.c.person_key.in_(batch)))
