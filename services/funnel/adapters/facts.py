"""Behaviour events in and out of storage: batched writes, and the reads that load exactly the facts an answer needs.

An answer over a time span needs more than the events inside it, because SPEC.md's rules reach beyond it: an
order counts at its earliest ``completed`` event wherever that lies, a refund counts only once its order's
completed event is known, product attributes are the latest carried ones, and so on. ``FactQuery`` loads the
span plus exactly those facts, each selected in SQL, so the pure functions in ``services.funnel.domain`` give
the same answer on the loaded facts as on the whole stored history.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    Select,
    Table,
    and_,
    func,
    not_,
    select,
    union,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from libs.common.copied_rows import copy_rows
from libs.common.db import cents
from libs.common.events import epoch_micros, from_epoch_micros
from services.funnel.adapters.mirror import next_seq
from services.funnel.adapters.tables import events, order_items
from services.funnel.domain.facts import FunnelEvent, OrderFacts, OrderItem


def _money(cents_value: int | None) -> Decimal | None:
    return None if cents_value is None else Decimal(cents_value).scaleb(-2)


async def store_facts(connection: AsyncConnection, facts: Sequence[FunnelEvent]) -> set[str]:
    """Insert events and their order items in two batched statements; a stored event_id is left as it is.
    Returns the event_ids that were stored before (their facts are left alone, order lines included)."""
    event_rows, item_rows = fact_rows(facts)
    stored = await store_rows(
        connection, [tuple(row[name] for name in EVENT_ROW) for row in event_rows],
        [tuple(row[name] for name in ITEM_ROW) for row in item_rows],
    )
    return stored.stored_before


# The consumer's rows are tuples in these column orders (`events` less seq and revised, which the write adds).
EVENT_ROW = tuple(column.name for column in events.c if column.name not in ("seq", "revised"))
ITEM_ROW = tuple(column.name for column in order_items.c)
_PG_TYPES = {BigInteger: "bigint", Integer: "integer", Float: "double precision", Boolean: "boolean"}


def _insert_sql(table: Table, columns: Sequence[str], key: str, dialect: str) -> str:
    """One INSERT for a whole batch: executemany of a one-row VALUES on SQLite (the loop runs in C), one
    statement over unnest()ed column arrays on PostgreSQL (one prepared statement, binary arrays)."""
    names = ", ".join(columns)
    if dialect == "sqlite":
        values = f"VALUES ({', '.join('?' * len(columns))})"
    else:
        def array(n: int, name: str) -> str:
            kind = type(table.c[name].type)
            return f"${n}::{_PG_TYPES.get(kind, 'text')}[]"

        values = f"SELECT * FROM unnest({', '.join(array(n, name) for n, name in enumerate(columns, 1))})"
    return f"INSERT INTO {table.name} ({names}) {values} ON CONFLICT ({key}) DO NOTHING"


_WRITTEN = ((events, (*EVENT_ROW, "seq", "revised"), "event_id"), (order_items, ITEM_ROW, "event_id, line"))
_INSERTS = {(dialect, table.name): _insert_sql(table, columns, key, dialect)
            for dialect in ("sqlite", "postgresql") for table, columns, key in _WRITTEN}
# PostgreSQL: the same insert through COPY (libs/common/copied_rows.py), about 10 us less CPU per event.
_COPIED = {table.name: (columns, key) for table, columns, key in _WRITTEN}


async def _insert_many(connection: AsyncConnection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    dialect = connection.dialect.name
    if dialect == "sqlite":
        await connection.exec_driver_sql(_INSERTS[dialect, table.name], rows)
        return
    columns, key = _COPIED[table.name]
    # A batch may hold an event_id twice (store_rows keeps the first, as the array form did): seq is their order.
    await copy_rows(connection, table.name, columns, rows, on_conflict=f"({key}) DO NOTHING",
                    order_by="seq" if table is events else None)


@dataclass(frozen=True)
class StoredRows:
    """What one ``store_rows`` call added: the rows stored now (``EVENT_ROW`` and ``ITEM_ROW`` tuples, in
    order), and ``first_seq``..``last_seq``, the seq values they took; every row in that range is theirs
    (``last_seq`` is ``first_seq - 1`` when nothing was stored). ``stored_before``: the event_ids left alone."""

    stored_before: set[str]
    event_rows: Sequence[tuple[Any, ...]] = ()
    item_rows: Sequence[tuple[Any, ...]] = ()
    first_seq: int = 0
    last_seq: int = -1


async def store_rows(
    connection: AsyncConnection, event_rows: Sequence[tuple[Any, ...]], item_rows: Sequence[tuple[Any, ...]]
) -> StoredRows:
    """Insert `events` rows (``EVENT_ROW`` tuples) and their `order_items` rows (``ITEM_ROW`` tuples); an
    event_id already stored is left as it is, and so are its order lines (those given again are dropped).
    This is the funnel consumer's idempotency: the events table is keyed by event_id, so the runtime records
    no claims for it (``claim_event_ids=False``)."""
    if not event_rows:
        return StoredRows(set())
    first = await next_seq(connection, connection.dialect.name == "sqlite")
    await _insert_many(connection, events, [(*row, first + n, False) for n, row in enumerate(event_rows)])
    # Every row with seq >= first is this transaction's (next_seq holds the write lock): fewer than given
    # means some event_ids were stored before.
    stored_now = (await connection.execute(
        select(func.count()).select_from(events).where(events.c.seq >= first)
    )).scalar_one()
    if stored_now == len(event_rows):
        if item_rows:
            await _insert_many(connection, order_items, list(item_rows))
        return StoredRows(set(), event_rows, item_rows, first, first + len(event_rows) - 1)
    taken: dict[str, int] = {event_id: seq for event_id, seq in await connection.execute(
        select(events.c.event_id, events.c.seq).where(events.c.seq >= first)
    )}
    # Row n was stored now if its event_id holds seq first + n (a copy given twice in one call is not).
    stored = [n for n, row in enumerate(event_rows) if taken.get(row[0]) == first + n]
    stored_before = {row[0] for row in event_rows} - taken.keys()
    # The lines of events stored now; of a line given twice the first, as the insert keeps.
    lines: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    for row in item_rows:
        if row[0] in taken:
            lines.setdefault((row[0], row[1]), row)
    item_rows = list(lines.values())
    if item_rows:
        await _insert_many(connection, order_items, item_rows)
    return StoredRows(stored_before, [event_rows[n] for n in stored], item_rows, first,
                      first + (stored[-1] if stored else -1))


def fact_rows(facts: Sequence[FunnelEvent]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of ``events`` (without seq) and of ``order_items`` that keep these facts."""
    item_rows = [
        {
            "event_id": fact.event_id, "line": line, "product_id": item.product_id, "category": item.category,
            "quantity": item.quantity, "unit_price_cents": cents(item.unit_price),
        }
        for fact in facts
        if fact.order is not None
        for line, item in enumerate(fact.order.items)
    ]
    return [_event_row(fact) for fact in facts], item_rows


def _event_row(fact: FunnelEvent) -> dict[str, Any]:
    order = fact.order
    return {
        "event_id": fact.event_id, "type": fact.type, "person_key": fact.person_key,
        "occurred_us": epoch_micros(fact.occurred_at), "source": fact.source, "product_id": fact.product_id,
        "product_name": fact.product_name, "category": fact.category, "price_cents": cents(fact.price),
        "declared_tier": fact.declared_tier, "quantity": fact.quantity, "inquiry_id": fact.inquiry_id,
        "response_seconds": fact.response_seconds, "rating": fact.rating,
        "order_id": order and order.order_id, "order_status": order and order.status,
        "total_cents": order and cents(order.total), "discount_cents": order and cents(order.discount),
        "coupon_code": order and order.coupon_code, "refund_cents": order and cents(order.refund_amount),
    }


async def pseudonymise_persons(connection: AsyncConnection, pseudonyms: Mapping[str, str]) -> None:
    """Replace each person key by its pseudonym on every stored event: personal data gone, counts unchanged."""
    if not pseudonyms:
        return
    first = await next_seq(connection, connection.dialect.name == "sqlite")
    for old, new in pseudonyms.items():
        lowest, highest = (await connection.execute(
            select(func.min(events.c.seq), func.max(events.c.seq)).where(events.c.person_key == old)
        )).one()
        if lowest is None:
            continue
        # Moved past every seq in use, in their own order, so the DuckDB copy picks them up as revisions.
        await connection.execute(
            update(events).where(events.c.person_key == old)
            .values(person_key=new, revised=True, seq=events.c.seq + (first - lowest))
        )
        first += highest - lowest + 1


class TooManyFacts(Exception):
    """A report would read more stored rows than the service allows one answer (``max_rows``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer would read more than {limit} stored event rows")
        self.limit = limit


class FactQuery:
    """The events of one span ``[start, end)`` known at ``as_of``, plus the facts beyond the span that
    SPEC.md's rules reach (added with the ``with_*`` methods), plus every order's counting event.

    With ``max_rows``, ``load`` reads at most that many rows (an order event counts once per line) and raises
    ``TooManyFacts`` rather than read more: one request never loads the whole history into memory."""

    def __init__(
        self, start: datetime, end: datetime, as_of: datetime, *, types: Collection[str] | None = None,
        max_rows: int | None = None,
    ) -> None:
        self._budget = _RowBudget(max_rows)
        self.as_of_us = epoch_micros(as_of)
        self.start_us = epoch_micros(start)
        self.end_us = min(epoch_micros(end), self.as_of_us + 1)
        span = [
            events.c.occurred_us >= self.start_us,
            events.c.occurred_us < self.end_us,
        ]
        if types is not None:
            span.append(events.c.type.in_(sorted(set(types))))
        self._in_span: ColumnElement[bool] = and_(*span)
        # Extras selecting event ids from the span in SQL, and extras per product of the span (given in chunks).
        self._extras: list[Select[Any]] = []
        self._product_extras: list[Callable[[Sequence[str]], Select[Any]]] = []

    def _known(self) -> ColumnElement[bool]:
        return events.c.occurred_us <= self.as_of_us

    def _between(self, start_us: int, end_us: int) -> ColumnElement[bool]:
        return and_(events.c.occurred_us >= start_us, events.c.occurred_us < end_us, self._known())

    def with_product_attributes(self) -> FactQuery:
        """For every product in the span, the latest events (up to as_of) carrying each of its attributes."""
        for column in ("product_name", "category", "price_cents", "declared_tier"):
            self._product_extras.append(
                lambda products, column=column: self._carriers(products, lambda table: table.c[column].is_not(None))
            )
        self._product_extras.append(self._item_carriers)
        return self

    def _carriers(self, products: Sequence[str], carries: Callable[[Table], ColumnElement[bool]]) -> Select[Any]:
        """Per product, the events at the latest instant up to as_of that satisfy `carries`.

        The instant is found per product by walking the (product_id, occurred_us) index from one end; every
        event at it is selected, because the domain breaks ties by event_id in its own order.
        """
        candidate = events.alias("candidate")
        instant = (
            select(candidate.c.occurred_us)
            .where(candidate.c.product_id == events.c.product_id, carries(candidate),
                   candidate.c.occurred_us <= self.as_of_us)
            .order_by(candidate.c.occurred_us.desc())
            .limit(1)
            .scalar_subquery()
        )
        return select(events.c.event_id).where(
            events.c.product_id.in_(products), carries(events), events.c.occurred_us == instant
        )

    def _item_carriers(self, products: Sequence[str]) -> Select[Any]:
        """Like ``_carriers`` for order lines: the order events at the latest instant up to as_of with a line of
        the product carrying a category."""
        condition = [order_items.c.product_id.in_(products), events.c.occurred_us <= self.as_of_us,
                     order_items.c.category.is_not(None)]
        joined = order_items.join(events, events.c.event_id == order_items.c.event_id)
        chosen = (
            select(order_items.c.product_id, func.max(events.c.occurred_us).label("at"))
            .select_from(joined)
            .where(*condition)
            .group_by(order_items.c.product_id)
            .subquery("chosen")
        )
        return (
            select(order_items.c.event_id)
            .select_from(joined)
            .join(chosen, and_(order_items.c.product_id == chosen.c.product_id, events.c.occurred_us == chosen.c.at))
            .where(*condition)
        )

    async def load(self, connection: AsyncConnection) -> list[FunnelEvent]:
        """The span's events, the extra facts asked for, and the counting candidates of every order among them."""
        in_span = and_(self._in_span, self._known())
        outside_span = and_(not_(self._in_span), self._known())
        loaded: dict[str, FunnelEvent] = {}
        await _fetch(self._budget, connection, in_span, loaded)
        beyond: dict[str, FunnelEvent] = {}
        if self._extras:
            await _fetch(self._budget, connection, and_(events.c.event_id.in_(union(*self._extras)), outside_span),
                         beyond, loaded)
        if self._product_extras:
            products = sorted({product for fact in loaded.values() for product in _products_of(fact)})
            for chunk in _chunks(products):
                chosen = union(*(extra(chunk) for extra in self._product_extras))
                await _fetch(self._budget, connection, and_(events.c.event_id.in_(chosen), outside_span), beyond,
                             loaded)
        loaded.update(beyond)
        # An order counts at its earliest completed event: load every completed event of each order seen.
        completed_elsewhere = and_(events.c.order_status == "completed", outside_span)
        span_orders = select(events.c.order_id).where(in_span, events.c.type == "order")
        await _fetch(self._budget, connection, and_(completed_elsewhere, events.c.order_id.in_(span_orders)),
                     loaded)
        other_orders = sorted({fact.order.order_id for fact in beyond.values() if fact.order is not None})
        for chunk in _chunks(other_orders):
            await _fetch(self._budget, connection, and_(completed_elsewhere, events.c.order_id.in_(chunk)), loaded)
        return list(loaded.values())


def _products_of(fact: FunnelEvent) -> Iterable[str]:
    """Every product an event names: its product, and its order lines' products."""
    if fact.product_id is not None:
        yield fact.product_id
    if fact.order is not None:
        yield from (item.product_id for item in fact.order.items)


def _chunks(values: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    # Bound the bound parameters of one statement (SQLite and asyncpg both have a limit).
    return (values[start : start + size] for start in range(0, len(values), size))


_EVENT_COLUMNS = (
    events.c.event_id, events.c.type, events.c.person_key, events.c.occurred_us, events.c.source,
    events.c.product_id, events.c.product_name, events.c.category, events.c.price_cents, events.c.declared_tier,
    events.c.quantity, events.c.inquiry_id, events.c.response_seconds, events.c.order_id, events.c.order_status,
    events.c.total_cents, events.c.discount_cents, events.c.coupon_code, events.c.refund_cents, events.c.rating,
)
_ITEM_COLUMNS = (
    order_items.c.event_id, order_items.c.line, order_items.c.product_id, order_items.c.category,
    order_items.c.quantity, order_items.c.unit_price_cents,
)


class _RowBudget:
    """The rows one ``FactQuery.load`` may still read (None: no limit)."""

    def __init__(self, max_rows: int | None) -> None:
        self.max_rows = max_rows
        self.left = max_rows

    def bound(self, statement: Select[Any]) -> Select[Any]:
        # One row more than is left: reading it tells that the limit was passed.
        return statement if self.left is None else statement.limit(self.left + 1)

    def spend(self, rows: int) -> None:
        if self.left is None or self.max_rows is None:
            return
        self.left -= rows
        if self.left < 0:
            raise TooManyFacts(self.max_rows)


async def _fetch(
    budget: _RowBudget, connection: AsyncConnection, condition: ColumnElement[bool], into: dict[str, FunnelEvent],
    known: Mapping[str, FunnelEvent] | None = None,
) -> None:
    """Load the events matching `condition`, with their order lines, that neither `into` nor `known` holds."""
    # One statement, so that `condition` is evaluated once; an order event comes once per line.
    statement = budget.bound(
        select(*_EVENT_COLUMNS, *_ITEM_COLUMNS)
        .select_from(events.outerjoin(order_items, order_items.c.event_id == events.c.event_id))
        .where(condition)
    )
    width = len(_EVENT_COLUMNS)
    skip = into.keys() | (known.keys() if known is not None else set())
    found: dict[str, Sequence[Any]] = {}
    lines: dict[str, list[tuple[int, OrderItem]]] = {}
    rows = (await connection.execute(statement)).all()
    budget.spend(len(rows))
    for row in rows:
        event_id = row[0]
        if event_id in skip:
            continue
        found.setdefault(event_id, row)
        if row[width + 1] is not None:
            _, line, product_id, category, quantity, unit_price_cents = row[width:]
            lines.setdefault(event_id, []).append(
                (line, OrderItem(product_id, category, quantity, _money(unit_price_cents)))
            )
    for event_id, row in found.items():
        into[event_id] = _fact(row, [item for _, item in sorted(lines.get(event_id, ()), key=_first)])


def _first(pair: tuple[int, OrderItem]) -> int:
    return pair[0]


def _fact(row: Sequence[Any], lines: Sequence[OrderItem]) -> FunnelEvent:
    (event_id, kind, person_key, occurred_us, source, product_id, product_name, category, price_cents,
     declared_tier, quantity, inquiry_id, response_seconds, order_id, order_status, total_cents, discount_cents,
     coupon_code, refund_cents, rating) = row[: len(_EVENT_COLUMNS)]
    order = None
    if kind == "order":
        order = OrderFacts(
            order_id, order_status, tuple(lines), _money(total_cents), _money(discount_cents), coupon_code,
            _money(refund_cents),
        )
    return FunnelEvent(
        event_id, kind, person_key, from_epoch_micros(occurred_us), source, product_id, product_name, category,
        _money(price_cents), declared_tier, quantity, inquiry_id, response_seconds, order, rating,
    )
