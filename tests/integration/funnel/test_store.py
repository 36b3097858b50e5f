"""The consumer's write is its own idempotency record (the runtime claims no event_ids for it): an event_id
stored before is left as it is, order lines included, and reported; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from libs.common.db import Database
from libs.common.events import Event
from services.funnel.adapters.facts import EVENT_ROW, ITEM_ROW, store_rows
from services.funnel.adapters.tables import MIGRATIONS, events, metadata, order_items
from services.funnel.decoding import StoredEvent, decode_event, stored_rows
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


# Events a batch is drawn from: few event_ids (so batches repeat earlier ones and each other), text that COPY's
# binary encoding and SQLite must keep as it is (empty, separators and quotes, what CSV and text COPY read as NULL,
# CJK, 256 characters),
# NULL and 0 in optional columns, orders of 1-3 lines.
_TEXTS = st.sampled_from(["", "x", "真丝连衣裙", "a,b\\c'd\"e|f", "NULL", "\\N", "y" * 256])


@st.composite
def _stored_events(draw: st.DrawFn) -> StoredEvent:
    event_id = f"e-{draw(st.integers(0, 12))}"
    person, at = f"u-{draw(st.integers(0, 3))}", T + timedelta(microseconds=draw(st.integers(0, 10**12)))
    if draw(st.booleans()):
        lines = draw(st.lists(st.tuples(st.sampled_from(["p-1", "p-2", "商品"]), st.integers(1, 1000),
                                        st.sampled_from(["0.01", "10", "999999.99"])), min_size=1, max_size=3))
        event = order(person, at, draw(_TEXTS.filter(bool)), lines, event_id=event_id)
    else:
        event = view(person, at, draw(_TEXTS.filter(bool)), name=draw(st.none() | _TEXTS),
                     category=draw(st.none() | _TEXTS), price=draw(st.none() | st.sampled_from(["0", "0.5"])),
                     source=draw(st.none() | _TEXTS.filter(bool)), event_id=event_id)
    return _reparse(event)


def _expected(batches: list[list[StoredEvent]]) -> tuple[list[Any], list[Any], list[list[str]]]:
    """What store_rows keeps, batch after batch: an event_id's first row (in seq order), the lines of a row stored
    now (of a line given twice the first, as the insert keeps), and per batch the rows stored now."""
    rows: dict[str, tuple[Any, ...]] = {}
    lines: dict[tuple[str, int], tuple[Any, ...]] = {}
    applied = []
    for batch in batches:
        event_rows, item_rows = stored_rows(batch)
        now = [row for n, row in enumerate(event_rows)
               if row[0] not in rows and all(other[0] != row[0] for other in event_rows[:n])]
        rows.update((row[0], row) for row in now)
        ids = {row[0] for row in now}
        for item in item_rows:
            if item[0] in ids:
                lines.setdefault((item[0], item[1]), item)
        applied.append([row[0] for row in now])
    return list(rows.values()), sorted(lines.values()), applied


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_stored_events(), min_size=1, max_size=8), min_size=1, max_size=4))
async def test_stored_rows_are_each_event_ids_first_on_random_batches(database_url, batches):
    """The batch write (executemany on SQLite, COPY then INSERT ... ON CONFLICT on PostgreSQL) keeps exactly each
    event_id's first row and its lines, every value as given, and reports the rows it stored now."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        async with database.begin() as connection:
            await connection.execute(delete(order_items))
            await connection.execute(delete(events))
        applied, ranges = [], []
        for batch in batches:
            async with database.begin() as connection:
                stored = await store_rows(connection, *stored_rows(batch))
            applied.append([row[0] for row in stored.event_rows])
            ranges.append((stored.first_seq, stored.last_seq))
        async with database.read() as connection:
            kept = (await connection.execute(
                select(events.c.seq, *(events.c[name] for name in EVENT_ROW)).order_by(events.c.seq))).all()
            kept_rows = [tuple(row[1:]) for row in kept]
            kept_lines = sorted(tuple(row) for row in await connection.execute(
                select(*(order_items.c[name] for name in ITEM_ROW))))
    finally:
        await database.close()
    want_rows, want_lines, want_applied = _expected(batches)
    assert [[(type(value), value) for value in row] for row in kept_rows] == \
        [[(type(value), value) for value in row] for row in want_rows]
    assert kept_lines == want_lines
    assert applied == want_applied
    # Every stored row with a seq in a call's first_seq..last_seq is one it reported (what the copy relies on).
    assert applied == [[row.event_id for row in kept if first <= row.seq <= last] for first, last in ranges]
