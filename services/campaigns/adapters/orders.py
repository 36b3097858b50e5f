"""Order events as the campaigns service stores them: raw events plus the counted order of each order_id."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows, bytewise, cents, chunks
from libs.common.events import PublishedEvent, epoch_micros
from services.campaigns.adapters.report_state import lock_report, refresh_persons
from services.campaigns.adapters.tables import counted_orders, order_events


def earlier(dialect: str, time: Any, event_id: Any, than_time: Any, than_event_id: Any) -> Any:
    """(time, event_id) < (than_time, than_event_id): SPEC's "first", ties by event_id."""
    return or_(time < than_time,
               and_(time == than_time, bytewise(dialect, event_id) < bytewise(dialect, than_event_id)))


_ORDER_COLUMNS = ("event_id", "person_key", "order_id", "status", "occurred_us", "total_cents", "discount_cents",
                  "coupon_code", "refund_cents")
_ORDER_ROWS = BulkRows(order_events, _ORDER_COLUMNS)
_COUNTED_COLUMNS = ("order_id", "event_id", "person_key", "occurred_us", "total_cents", "discount_cents",
                    "coupon_code")
_COUNTED_ROWS = BulkRows(counted_orders, _COUNTED_COLUMNS)


@functools.cache
def _writes(dialect: str) -> tuple[Any, Any]:
    raw = _ORDER_ROWS.insert(dialect).on_conflict_do_nothing(index_elements=["event_id"])
    counted = _COUNTED_ROWS.insert(dialect)
    new, old = counted.excluded, counted_orders.c
    # An order counts at its earliest completed event, whichever arrives first.
    counted = counted.on_conflict_do_update(
        index_elements=["order_id"],
        set_={name: new[name] for name in _COUNTED_COLUMNS if name != "order_id"},
        where=earlier(dialect, new.occurred_us, new.event_id, old.occurred_us, old.event_id),
    )
    return raw, counted


def order_row(event: PublishedEvent) -> tuple[Any, ...]:
    order = event.order
    assert order is not None
    return (event.event_id, event.person_key, order.order_id, order.status, epoch_micros(event.occurred_at),
            cents(order.total), cents(order.discount), order.coupon_code, cents(order.refund_amount))


async def record_orders(connection: AsyncConnection, events: Sequence[PublishedEvent]) -> None:
    """Store order events, keep each order_id's counted (earliest completed) event, and refresh the report shares
    of every person whose orders these events may change: the events' persons and the persons the orders counted
    for until now (a late earlier completed event can move an order to another person)."""
    if not events:
        return
    await lock_report(connection)
    dialect = connection.dialect.name
    raw, counted = _writes(dialect)
    rows = [order_row(event) for event in events]
    affected = {row[1] for row in rows}
    for batch in chunks({row[2] for row in rows}):
        query = select(counted_orders.c.person_key).where(counted_orders.c.order_id.in_(batch))
        affected.update((await connection.execute(query)).scalars())
    await connection.execute(raw, _ORDER_ROWS.params(dialect, rows))
    completed: dict[str, tuple[Any, ...]] = {}
    for event_id, person, order_id, status, occurred_us, total, discount, code, _ in rows:
        if status != "completed":
            continue
        candidate = (order_id, event_id, person, occurred_us, total, discount, code)
        kept = completed.get(order_id)
        # Within the batch too: the earliest completed event per order_id (one row per key per statement).
        if kept is None or (occurred_us, event_id) < (kept[3], kept[1]):
            completed[order_id] = candidate
    if completed:
        await connection.execute(counted, _COUNTED_ROWS.params(dialect, list(completed.values())))
    await refresh_persons(connection, affected)


def earliest_completed_events(dialect: str, order_ids: Collection[str]) -> Any:
    """Counted-order rows of these order_ids derived from the raw order events."""
    event, other = order_events.alias("event"), order_events.alias("other")
    earlier_event = select(other.c.event_id).where(
        other.c.order_id == event.c.order_id, other.c.status == "completed",
        earlier(dialect, other.c.occurred_us, other.c.event_id, event.c.occurred_us, event.c.event_id),
    ).exists()
    return select(*(event.c[name] for name in _COUNTED_COLUMNS)).where(
        event.c.status == "completed", ~earlier_event, event.c.order_id.in_(order_ids))


async def completed_order_times(connection: AsyncConnection, person_key: str, start_us: int, end_us: int) -> list[int]:
    """Times of the person's counted orders in [start, end] (the abandonment decision's evidence)."""
    order = counted_orders.c
    query = select(order.occurred_us).where(order.person_key == person_key, order.occurred_us >= start_us,
                                            order.occurred_us <= end_us)
    return list((await connection.execute(query)).scalars())


async def coupon_uses(connection: AsyncConnection, code: str, person_key: str) -> int:
    """Counted completed orders of the code's own person carrying the code (every use so far, SPEC "Coupons")."""
    order = counted_orders.c
    query = select(order.order_id).where(order.coupon_code == code, order.person_key == person_key)
    return len((await connection.execute(query)).all())
