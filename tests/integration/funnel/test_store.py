"""The consumer's write is its own idempotency record (the runtime claims no event_ids for it): an event_id
stored before is left as it is, order lines included, and reported; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from libs.common.db import Database
from libs.common.events import Event
from services.funnel.adapters.tables import MIGRATIONS, events, metadata, order_items
from services.funnel.decoding import StoredEvent, decode_event
from services.funnel.handlers import record_events
from tests.integration.funnel.helpers import order, view

T = datetime(2026, 3, 1, tzinfo=UTC)


def _reparse(event: Event) -> StoredEvent:
    """As the consumer reads it off the topic."""
    return decode_event(event.to_json())


async def test_a_stored_event_id_is_left_alone_with_its_lines_and_reported(database_url):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        first = [_reparse(e) for e in (
            view("u-1", T, "p-1", event_id="v-1"),
            order("u-1", T + timedelta(hours=1), "o-1", [("p-1", 1, "10.00")], event_id="o-1"),
        )]
        async with database.begin() as connection:
            assert await record_events(connection, first) == first
        # Redelivered, and once more under the same ids with other content (a client reusing an id): the first
        # stored version stays, lines included; the new event is stored.
        again = [_reparse(e) for e in (
            order("u-2", T, "o-9", [("p-7", 5, "1.00"), ("p-8", 1, "2.00")], event_id="o-1"),
            view("u-3", T, "p-3", event_id="v-2"),
            view("u-1", T, "p-1", event_id="v-1"),
        )]
        async with database.begin() as connection:
            applied = await record_events(connection, again)
        assert [e.event_id for e in applied] == ["v-2"]
        async with database.read() as connection:
            stored = (await connection.execute(
                select(events.c.event_id, events.c.person_key, events.c.order_id, events.c.seq).order_by(events.c.seq)
            )).all()
            lines = (await connection.execute(select(order_items.c.event_id, order_items.c.product_id))).all()
        assert [tuple(row[:3]) for row in stored] == [("v-1", "u-1", None), ("o-1", "u-1", "o-1"), ("v-2", "u-3", None)]
        assert [row.seq for row in stored] == sorted({row.seq for row in stored})  # increasing, no repeats
        assert stored[2].seq > stored[1].seq
        assert sorted(map(tuple, lines)) == [("o-1", "p-1")]
    finally:
        await database.close()
