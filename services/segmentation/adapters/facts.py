"""Customer facts: batched writes from the consumer, and the reads figures are computed from."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Select,
    and_,
    case,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows, bytewise, chunks, wide_sum, wide_total
from services.segmentation.adapters.fact_changes import pseudonymize_changes
from services.segmentation.adapters.tables import (
    PERSONAL_TABLES,
    counted_orders,
    customer_events,
    customer_orders,
    customer_segments,
    customer_traits,
    profiles,
)
from services.segmentation.decoding import CustomerEvent
from services.segmentation.domain.customers import REPEAT_WINDOW, OrderStatus

_REPEAT_WINDOW_US = REPEAT_WINDOW // timedelta(microseconds=1)
_STREAMED_ROWS = 20_000
_DAY_US = 86_400_000_000


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


def _earlier(dialect: str, time: Any, event_id: Any, than_time: Any, than_event_id: Any) -> Any:
    """(time, event_id) < (than_time, than_event_id): SPEC's "first", ties by event_id."""
    return or_(time < than_time,
               and_(time == than_time, bytewise(dialect, event_id) < bytewise(dialect, than_event_id)))


# The consumer's batches (up to 5,000 events): copied on PostgreSQL (BulkRows, libs/common/copied_rows.py).
_EVENT_ROWS = BulkRows(customer_events, ("event_id", "person_key", "type", "occurred_us"), copied=True)
_ORDER_ROWS = BulkRows(customer_orders, ("event_id", "person_key", "order_id", "status", "occurred_us", "total_cents",
                                         "refund_cents"), copied=True)
_TRAIT_ROWS = BulkRows(customer_traits, ("event_id", "person_key", "occurred_us", "traits"), copied=True)
_COUNTED_ROWS = BulkRows(counted_orders, ("order_id", "event_id", "person_key", "occurred_us", "total_cents"),
                         copied=True)
_PROFILE_ROWS = BulkRows(profiles, ("person_key", "first_seen_us", "first_event_id", "acquisition_source",
                                    "last_seen_us", "last_event_id"), copied=True)


@dataclass(frozen=True)
class _Writes:
    """The consumer's statements for one dialect, built once (SQLAlchemy then caches their compilation)."""

    events: Any
    orders: Any
    traits: Any
    counted: Any
    profiles: Any


@functools.cache
def _writes(dialect: str) -> _Writes:
    def keep_stored(rows: BulkRows) -> Any:
        return rows.insert(dialect).on_conflict_do_nothing(index_elements=["event_id"])

    counted = _COUNTED_ROWS.insert(dialect)
    new, old = counted.excluded, counted_orders.c
    # An order counts at its earliest completed event, whichever arrives first.
    counted = counted.on_conflict_do_update(
        index_elements=["order_id"],
        set_={"event_id": new.event_id, "person_key": new.person_key, "occurred_us": new.occurred_us,
              "total_cents": new.total_cents},
        where=_earlier(dialect, new.occurred_us, new.event_id, old.occurred_us, old.event_id),
    )
    profile = _PROFILE_ROWS.insert(dialect)
    new, old = profile.excluded, profiles.c
    earlier = _earlier(dialect, new.first_seen_us, new.first_event_id, old.first_seen_us, old.first_event_id)
    later = _earlier(dialect, old.last_seen_us, old.last_event_id, new.last_seen_us, new.last_event_id)
    profile = profile.on_conflict_do_update(
        index_elements=["person_key"],
        set_={
            "first_seen_us": case((earlier, new.first_seen_us), else_=old.first_seen_us),
            "first_event_id": case((earlier, new.first_event_id), else_=old.first_event_id),
            "acquisition_source": case((earlier, new.acquisition_source), else_=old.acquisition_source),
            "last_seen_us": case((later, new.last_seen_us), else_=old.last_seen_us),
            "last_event_id": case((later, new.last_event_id), else_=old.last_event_id),
        },
        # An event between the person's first and last changes nothing: no write at all.
        where=or_(earlier, later),
    )
    return _Writes(
        events=keep_stored(_EVENT_ROWS).returning(customer_events.c.event_id),
        orders=keep_stored(_ORDER_ROWS), traits=keep_stored(_TRAIT_ROWS), counted=counted, profiles=profile,
    )


async def record_events(connection: AsyncConnection, events: Sequence[CustomerEvent]) -> list[CustomerEvent]:
    """Store a batch of events as facts, one statement per table, and return the events applied now: those
    whose event_id was not stored before. The customer_events table, keyed by event_id (erasure keeps the key
    under a pseudonym), is the consumer's idempotency record: a repeated event changes nothing."""
    dialect = connection.dialect.name
    writes = _writes(dialect)
    event_rows = [(event.event_id or "", event.person_key, event.type, event.occurred_us) for event in events]
    if not event_rows:
        return []
    # The runtime hands over an event_id once per batch: which copy a repeat within the statement would keep
    # (the first on SQLite; on PostgreSQL the first the staged rows' scan reads) does not arise.
    new_ids = set((await connection.execute(writes.events, await _EVENT_ROWS.bind(connection, event_rows))).scalars())
    applied, applied_rows = [], []
    for event, row in zip(events, event_rows, strict=True):
        if row[0] in new_ids:
            new_ids.discard(row[0])  # a second copy within the batch is a repeat too
            applied.append(event)
            applied_rows.append(row)
    seen: dict[str, _Seen] = {}
    counted: dict[str, tuple[Any, ...]] = {}
    order_rows, trait_rows = [], []
    for event, (event_id, person, _, occurred_us) in zip(applied, applied_rows, strict=True):
        moment = (occurred_us, event_id)
        known = seen.get(person)
        if known is None:
            seen[person] = _Seen(moment, event.source, moment)
        else:
            known.see(moment, event.source)
        order = event.order
        if order is not None:
            total = order.total_cents
            order_rows.append((event_id, person, order.order_id, order.status, occurred_us, total,
                               order.refund_cents))
            if order.status == OrderStatus.COMPLETED:
                # One row per order_id per statement (an upsert may not touch a row twice): the batch's earliest.
                earliest = counted.get(order.order_id)
                if earliest is None or moment < (earliest[3], earliest[1]):
                    counted[order.order_id] = (order.order_id, event_id, person, occurred_us, total)
        if event.traits is not None:
            trait_rows.append((event_id, person, occurred_us, event.traits))
    for statement, rows, written in ((writes.orders, _ORDER_ROWS, order_rows), (writes.traits, _TRAIT_ROWS, trait_rows),
                                     (writes.counted, _COUNTED_ROWS, list(counted.values()))):
        if written:
            await connection.execute(statement, await rows.bind(connection, written))
    if seen:
        profile_rows = [(person, s.first[0], s.first[1], s.source, s.last[0], s.last[1]) for person, s in seen.items()]
        await connection.execute(writes.profiles, await _PROFILE_ROWS.bind(connection, profile_rows))
    return applied


def earliest_completed_events(connection: AsyncConnection | Connection,
                              order_ids: Collection[str] | None = None) -> Select[Any]:
    """Counted-order rows derived from the raw order events (of these order_ids, or all)."""
    dialect = connection.dialect.name
    event, other = customer_orders.alias("event"), customer_orders.alias("other")
    completed = OrderStatus.COMPLETED.value
    earlier_event = select(other.c.event_id).where(
        other.c.order_id == event.c.order_id, other.c.status == completed,
        _earlier(dialect, other.c.occurred_us, other.c.event_id, event.c.occurred_us, event.c.event_id),
    ).exists()
    query = select(event.c.order_id, event.c.event_id, event.c.person_key, event.c.occurred_us,
                   event.c.total_cents).where(event.c.status == completed, ~earlier_event)
    return query if order_ids is None else query.where(event.c.order_id.in_(order_ids))


async def erase_persons(connection: AsyncConnection, pseudonyms: Mapping[str, str]) -> None:
    """Delete every row naming these persons (SPEC.md "Customers", erasure), except that each stored event's
    key stays, under the person's pseudonym and without any other field of the person: it is what tells the
    consumer that a redelivered copy of the event was applied before, so the copy cannot bring them back."""
    for batch in chunks(pseudonyms):
        # Another person's completed event of an order they counted becomes the counted one.
        orphaned = list((await connection.execute(
            select(counted_orders.c.order_id).where(counted_orders.c.person_key.in_(batch))
        )).scalars())
        for person in batch:
            await connection.execute(update(customer_events).where(customer_events.c.person_key == person)
                                     .values(person_key=pseudonyms[person]))
        for table in PERSONAL_TABLES:
            if table is not customer_events:
                await connection.execute(delete(table).where(table.c.person_key.in_(batch)))
        for orders in chunks(orphaned):
            columns = [column.name for column in counted_orders.c]
            await connection.execute(counted_orders.insert().from_select(
                columns, earliest_completed_events(connection, orders)
            ))
        # Last: the deletes above were logged under the person's key too.
        await pseudonymize_changes(connection, {person: pseudonyms[person] for person in batch})


async def _in_chunks(connection: AsyncConnection, query: Select[Any], column: Any,
                     persons: Collection[str] | None) -> list[Any]:
    if persons is None:
        return list((await connection.execute(query)).all())
    rows: list[Any] = []
    for batch in chunks(persons):
        rows.extend((await connection.execute(query.where(column.in_(batch)))).all())
    return rows


def _cents_sum(cents: Any, name: str) -> list[Any]:
    # A person's orders can total more than 64 bits hold: the exact pair name_high, name_low (libs/common/db.py).
    high, low = wide_sum(cents)
    return [high.label(f"{name}_high"), low.label(f"{name}_low")]


def cents_total(high: int | None, low: int | None) -> int | None:
    """The total in cents of a ``*_high``, ``*_low`` pair of columns."""
    return wide_total(high, low)


def _order_sums(as_of_us: int, lookback_start_us: int, persons: list[str] | None) -> Any:
    """Per person with counted orders up to as_of: orders, gmv_high and gmv_low (``wide_sum``), first_order_us, last_order_us,
    and frequency and monetary_high and monetary_low of those after lookback_start."""
    order = counted_orders.c
    in_lookback = order.occurred_us > lookback_start_us
    query = (
        select(order.person_key, func.count().label("orders"), *_cents_sum(order.total_cents, "gmv"),
               func.min(order.occurred_us).label("first_order_us"), func.max(order.occurred_us).label("last_order_us"),
               func.count(case((in_lookback, 1))).label("frequency"),
               *_cents_sum(case((in_lookback, order.total_cents), else_=0), "monetary"))
        .where(order.occurred_us <= as_of_us)
        .group_by(order.person_key)
    )
    return (query if persons is None else query.where(order.person_key.in_(persons))).subquery("order_sums")


def _batches(persons: Collection[str] | None) -> Iterable[list[str] | None]:
    return (None,) if persons is None else chunks(persons)


async def customer_totals(
    connection: AsyncConnection, as_of_us: int, lookback_start_us: int, persons: Collection[str] | None = None,
) -> list[Any]:
    """Per person with an event at or before as_of (the named ones, or all): the profile and the sums of
    their counted orders up to as_of.

    Row fields: person_key, first_seen_us, acquisition_source, last_seen_us, orders, gmv_high, gmv_low,
    first_order_us, last_order_us, frequency, monetary_high, monetary_low, repeat_orders_90d (the order
    fields are NULL for a person without orders; ``cents_total`` joins a high/low pair).
    """
    person = profiles.c
    rows: list[Any] = []
    for batch in _batches(persons):
        sums = _order_sums(as_of_us, lookback_start_us, batch)
        # Orders within 90 days of the first, the first included (hence - 1).
        later = counted_orders.alias("later")
        within_window = (
            select(func.count()).where(later.c.person_key == sums.c.person_key, later.c.occurred_us <= as_of_us,
                                       later.c.occurred_us <= sums.c.first_order_us + _REPEAT_WINDOW_US)
            .scalar_subquery()
        )
        query = (
            select(person.person_key, person.first_seen_us, person.acquisition_source, person.last_seen_us,
                   sums.c.orders, sums.c.gmv_high, sums.c.gmv_low, sums.c.first_order_us, sums.c.last_order_us,
                   sums.c.frequency, sums.c.monetary_high, sums.c.monetary_low,
                   (within_window - 1).label("repeat_orders_90d"))
            .select_from(profiles.outerjoin(sums, sums.c.person_key == person.person_key))
            .where(person.first_seen_us <= as_of_us)
        )
        rows.extend((await connection.execute(query if batch is None else query.where(
            person.person_key.in_(batch)))).all())
    return rows


async def standing_sums(
    connection: AsyncConnection, as_of_us: int, lookback_start_us: int, persons: Collection[str] | None = None,
    *, stored_segments: bool = False,
) -> AsyncIterator[Sequence[Any]]:
    """What the built-in segments are decided from, per person (the named ones, or all), one query,
    streamed in parts (a million rows are worked on while the database still sends):
    ``(person_key, orders, last_order_us, frequency, monetary_high, monetary_low, known, segment_ids)``.

    ``known``: the person has an event at or before as_of; the sums are NULL without counted orders.
    With ``stored_segments``, also the persons with a stored membership who are not known at as_of, and
    ``segment_ids`` as stored (NULL when none).
    """
    for batch in _batches(persons):
        sums = _order_sums(as_of_us, lookback_start_us, batch)
        person, stored = profiles, customer_segments
        if batch is not None:
            # A few persons: their rows first. (Everyone: the base tables, so that SQLite joins through
            # the primary keys; a full join of two subqueries it would scan once per row.)
            person = select(profiles).where(profiles.c.person_key.in_(batch)).subquery("person")
            stored = select(customer_segments).where(customer_segments.c.person_key.in_(batch)).subquery("stored")
        known = person.c.first_seen_us <= as_of_us
        people, person_key = person, person.c.person_key
        if stored_segments:
            people = person.join(stored, stored.c.person_key == person.c.person_key, full=True)
            person_key = func.coalesce(person.c.person_key, stored.c.person_key)
        query = (
            select(person_key, sums.c.orders, sums.c.last_order_us, sums.c.frequency, sums.c.monetary_high,
                   sums.c.monetary_low,
                   func.coalesce(known, False), stored.c.segment_ids if stored_segments else null())
            .select_from(people.outerjoin(sums, sums.c.person_key == person.c.person_key))
            .where(or_(known, stored.c.person_key.is_not(None)) if stored_segments else known)
        )
        result = await connection.stream(query)
        async for part in result.partitions(_STREAMED_ROWS):
            yield part


def _rfm_figures(as_of_us: int, lookback_start_us: int) -> Select[Any]:
    order = counted_orders.c
    return (
        select(order.person_key, func.max(order.occurred_us).label("last_order_us"),
               func.count().label("frequency"), *_cents_sum(order.total_cents, "monetary"))
        .where(order.occurred_us > lookback_start_us, order.occurred_us <= as_of_us)
        .group_by(order.person_key)
    )


async def rfm_cut_inputs(connection: AsyncConnection, as_of_us: int, lookback_start_us: int, *,
                         monetary: bool) -> tuple[list[tuple[int, int, int]], dict[int, int]]:
    """What the RFM population's quintile cuts are taken from, in one pass over the counted orders:
    ``(recency_days, frequency, customers)`` per pair present, and with ``monetary`` the monetary values
    (cents) at the 1-based ranks ceil(k x N / 5), k = 1..4, in ascending order, N the population: rank -> value.
    """
    figures = _rfm_figures(as_of_us, lookback_start_us).cte("figures")
    recency_days = (as_of_us - figures.c.last_order_us) // _DAY_US
    parts = [select(literal(0).label("part"), recency_days.label("a"), figures.c.frequency.label("b"),
                    func.count().label("c")).group_by(recency_days, figures.c.frequency)]
    if monetary:
        high, low = figures.c.monetary_high, figures.c.monetary_low
        ranked = select(high, low, func.row_number().over(order_by=(high, low)).label("rank")).subquery()
        population = select(func.count().label("customers")).select_from(figures).subquery()
        ranks = [(k * population.c.customers + 4) // 5 for k in range(1, 5)]  # ceil(kN / 5)
        parts.append(select(literal(1), ranked.c.rank, ranked.c.monetary_high, ranked.c.monetary_low)
                     .select_from(ranked.join(population, true())).where(ranked.c.rank.in_(ranks)))
    histogram: list[tuple[int, int, int]] = []
    cut_values: dict[int, int] = {}
    for part, a, b, c in await connection.execute(union_all(*parts) if monetary else parts[0]):
        if part == 0:
            histogram.append((a, b, c))
        else:
            cut_values[a] = cents_total(b, c)
    return histogram, cut_values


async def last_seen_at_or_before(connection: AsyncConnection, as_of_us: int,
                                 persons: Collection[str]) -> dict[str, int]:
    """The latest event time <= as_of of persons who also have later events."""
    query = (select(customer_events.c.person_key, func.max(customer_events.c.occurred_us))
             .where(customer_events.c.occurred_us <= as_of_us).group_by(customer_events.c.person_key))
    return dict(await _in_chunks(connection, query, customer_events.c.person_key, persons))


async def event_type_counts(
    connection: AsyncConnection, event_type: str, after_us: int | None, as_of_us: int,
    persons: Collection[str] | None = None,
) -> dict[str, int]:
    """Events of one type per person in (after, as_of] (from the beginning when ``after_us`` is None).

    For ``order`` the count is of counted orders (an order_id once, at its earliest completed event),
    the definition every other order figure uses.
    """
    if event_type == "order":
        rows = counted_orders.c
        query = select(rows.person_key, func.count()).where(rows.occurred_us <= as_of_us)
    else:
        rows = customer_events.c
        query = select(rows.person_key, func.count()).where(rows.type == event_type, rows.occurred_us <= as_of_us)
    if after_us is not None:
        query = query.where(rows.occurred_us > after_us)
    query = query.group_by(rows.person_key)
    return dict(await _in_chunks(connection, query, rows.person_key, persons))


async def event_counts_of(connection: AsyncConnection, person: str, event_types: Collection[str],
                          as_of_us: int) -> dict[str, int]:
    """One person's events of these types up to as_of, per type (types without any are absent)."""
    rows = customer_events.c
    query = (select(rows.type, func.count())
             .where(rows.person_key == person, rows.type.in_(list(event_types)), rows.occurred_us <= as_of_us)
             .group_by(rows.type))
    return {event_type: count for event_type, count in await connection.execute(query)}


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
