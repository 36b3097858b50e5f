"""The DuckDB copy holds exactly the stored facts: loaded at start (PostgreSQL: bulk CSV, SQLite: batches),
followed by seq afterwards, and rewritten rows (erasure) replaced — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from libs.common.db import Database
from services.funnel.adapters.facts import pseudonymise_persons, store_facts
from services.funnel.adapters.mirror import EVENTS_SCHEMA, ITEMS_SCHEMA, FactMirror
from services.funnel.adapters.tables import MIGRATIONS, events, metadata, order_items
from tests.integration.funnel.helpers import facts, order, refund, review, view

T = datetime(2026, 3, 1, tzinfo=UTC)
# Text that CSV must quote or could take for NULL, and text that is not ASCII.
AWKWARD = ('comma, "quoted"', "", "line\nbreak", "真丝连衣裙", "\\N", "NULL")


def _events(offset: int):
    built = [view(f"u-{offset}-{n}", T + timedelta(minutes=n), f"p-{n}", category=name or None, price="9.99",
                  name=name) for n, name in enumerate(AWKWARD)]
    built += [order(f"u-{offset}-0", T + timedelta(hours=1), f"o-{offset}", [("p-0", 2, "5.00"), ("p-1", 1, "0.01")],
                    source="ads, \"spring\""),
              refund(f"u-{offset}-0", T + timedelta(hours=2), f"o-{offset}", None),
              review(f"u-{offset}-1", T, 4, "p-1")]
    return facts(built)


async def _stored(database: Database) -> tuple[list[tuple], list[tuple]]:
    names = [field.name for field in EVENTS_SCHEMA]
    async with database.read() as connection:
        rows = (await connection.execute(select(*(events.c[n] for n in names)))).all()
        items = (await connection.execute(select(order_items))).all()
    return sorted(map(tuple, rows)), sorted(map(tuple, items))


def _copied(mirror: FactMirror) -> tuple[list[tuple], list[tuple]]:
    names = ", ".join(field.name for field in EVENTS_SCHEMA)
    items = ", ".join(field.name for field in ITEMS_SCHEMA)
    orders = mirror.duckdb.execute(f"SELECT {names} FROM order_events").fetchall()
    assert sorted(orders) == sorted(mirror.duckdb.execute(
        f"SELECT {names} FROM events WHERE order_status IS NOT NULL").fetchall())
    assert orders, "the order events are copied to order_events"
    return (sorted(mirror.duckdb.execute(f"SELECT {names} FROM events").fetchall()),
            sorted(mirror.duckdb.execute(f"SELECT {items} FROM order_items").fetchall()))


async def test_the_copy_equals_the_stored_facts_through_load_follow_and_erasure(database_url):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    mirror = FactMirror(database)
    try:
        async with database.begin() as connection:
            await store_facts(connection, _events(1))
        assert await mirror.refresh() > 0  # the first load (PostgreSQL: bulk)
        stored = await _stored(database)
        assert len(stored[0]) == len(AWKWARD) + 3 and len(stored[1]) == 2
        assert _copied(mirror) == stored

        async with database.begin() as connection:
            await store_facts(connection, _events(2))
        assert await mirror.refresh() == len(AWKWARD) + 3
        assert _copied(mirror) == await _stored(database)

        async with database.begin() as connection:
            await pseudonymise_persons(connection, {"u-1-0": "erased:x"})
        assert await mirror.refresh() == 3  # u-1-0's view, order and refund, rewritten
        copied = _copied(mirror)
        assert copied == await _stored(database)
        assert not any("u-1-0" in row for row in copied[0])
        assert len(copied[1]) == 4  # the order's lines replaced, not doubled
        assert await mirror.refresh() == 0
    finally:
        await mirror.stop()
        await database.close()
