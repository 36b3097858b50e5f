"""A rejected-events table written by the first schema (no person_key) is brought to the current one: the
column is added, indexed and filled from each stored raw body, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, inspect, select

from libs.common.db import SCHEMA_MIGRATIONS, Database, service_metadata
from services.ingest.adapters.rejected import MIGRATIONS, metadata, rejected_events
from tests.support import write_older_schema

_FIRST = MetaData()
rejected_then = Table(
    "rejected_events", _FIRST,
    Column("rejection_id", String(64), primary_key=True),
    Column("received_us", BigInteger, nullable=False, index=True),
    Column("format", String(16), nullable=False),
    Column("route", String(64), nullable=False),
    Column("item_index", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("raw", Text, nullable=False),
    Column("replayed_us", BigInteger, nullable=True),
    Column("replayed_event_id", String(256), nullable=True),
)

BAD_TIME = {"type": "view", "occurred_at": "yesterday", "product": {"product_id": "p-1"}}
# rejection_id -> (format, raw as stored, the key it must get)
STORED: dict[str, tuple[str, str, str | None]] = {
    "r-native": ("native", orjson.dumps(BAD_TIME | {"user_id": "u-1"}).decode(), "u-1"),
    "r-anonymous": ("native", orjson.dumps(BAD_TIME | {"anonymous_id": "a-1"}).decode(), "anon:a-1"),
    "r-segment": ("segment", orjson.dumps({"type": "track", "userId": 42, "timestamp": "x"}).decode(), "42"),
    "r-no-ids": ("native", orjson.dumps(BAD_TIME).decode(), None),
    "r-bad-id": ("native", orjson.dumps(BAD_TIME | {"user_id": {"id": "u-1"}}).decode(), None),
    "r-not-object": ("native", orjson.dumps([1, 2]).decode(), None),
    "r-not-json": ("native", "{not json", None),
}
# More rows than one backfill slice (1,000), so that slicing is exercised.
MANY = {f"r-many-{n:05d}": ("native", orjson.dumps(BAD_TIME | {"user_id": f"u-many-{n}"}).decode(), f"u-many-{n}")
        for n in range(2_100)}


def _row(rejection_id: str, fmt: str, raw: str) -> dict[str, Any]:
    return {"rejection_id": rejection_id, "received_us": 1, "format": fmt, "route": "/v1/events",
            "item_index": 0, "error": "occurred_at: bad", "raw": raw}


def _first_schema(connection) -> None:
    _FIRST.create_all(connection)
    migrations = service_metadata().tables[SCHEMA_MIGRATIONS]
    connection.execute(migrations.insert().values(version=1, name="rejected events"))
    connection.execute(rejected_then.insert(), [_row(rid, fmt, raw) for rid, (fmt, raw, _) in (STORED | MANY).items()])


async def test_the_first_schema_gets_person_keys_derived_from_the_stored_bodies(database_url):
    await write_older_schema(database_url, _first_schema)

    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        async with database.read() as connection:
            rows = (await connection.execute(select(rejected_events.c.rejection_id, rejected_events.c.person_key,
                                                    rejected_events.c.raw))).all()
            indexes = await connection.run_sync(
                lambda sync: {index["name"]: index["column_names"] for index in inspect(sync).get_indexes("rejected_events")})
            versions = (await connection.execute(select(service_metadata().tables[SCHEMA_MIGRATIONS].c.version))).scalars()
            versions = sorted(versions)
    finally:
        await database.close()

    assert {row.rejection_id: row.person_key for row in rows} == {rid: key for rid, (_, _, key) in (STORED | MANY).items()}
    assert {row.rejection_id: row.raw for row in rows} == {rid: raw for rid, (_, raw, _) in (STORED | MANY).items()}
    assert indexes["ix_rejected_events_person"] == ["person_key"]
    assert versions == [1, 2]


async def test_a_new_database_gets_the_current_table_at_step_one_and_step_two_finds_it_done(database_url):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()  # step 2 on a table created with person_key already: must not add it again
    try:
        async with database.read() as connection:
            columns = await connection.run_sync(
                lambda sync: [column["name"] for column in inspect(sync).get_columns("rejected_events")])
    finally:
        await database.close()
    assert columns.count("person_key") == 1
