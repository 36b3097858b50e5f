"""A database written by the first schema (raw order events, membership one row per segment and person,
a table of pending evaluations) is brought to the current one with its facts and membership intact."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, inspect, select

from libs.common.db import SCHEMA_MIGRATIONS, Database, service_metadata
from services.segmentation.adapters.migrations import MIGRATIONS
from services.segmentation.adapters.tables import (
    counted_orders,
    customer_events,
    customer_orders,
    customer_segments,
    metadata,
)
from tests.support import write_older_schema

_FIRST_ONLY = MetaData()
segment_members = Table("segment_members", _FIRST_ONLY, Column("segment_id", String(64), primary_key=True),
                        Column("person_key", String(300), primary_key=True),
                        Column("entered_us", BigInteger, nullable=False))
Table("pending_evaluations", _FIRST_ONLY, Column("person_key", String(300), primary_key=True),
      Column("token", String(32), nullable=False))
# As an older version's migration 5 made it; migration 9 drops it (nothing reads it any more).
Table("fact_versions", _FIRST_ONLY, Column("writer", String(32), primary_key=True))
events_then = Table("customer_events", MetaData(), Column("person_key", String(300)), Column("occurred_us", BigInteger))
Index("ix_customer_events_person", events_then.c.person_key, events_then.c.occurred_us)


def _first_schema(connection) -> None:
    service_metadata().create_all(connection)
    current = [table for name, table in metadata.tables.items()
               if name not in ("counted_orders", "customer_segments")]
    metadata.create_all(connection, tables=current)
    for index in customer_events.indexes:
        index.drop(connection)
    for index in events_then.indexes:
        index.create(connection)
    _FIRST_ONLY.create_all(connection)
    migrations = service_metadata().tables[SCHEMA_MIGRATIONS]
    connection.execute(migrations.insert().values(version=1, name="customer facts, segments and membership"))
    order = {"status": "completed", "order_id": "o-1", "total_cents": 10000, "refund_cents": None}
    connection.execute(customer_orders.insert(), [
        {"event_id": "e-late", "person_key": "u-a", "occurred_us": 2_000, **order},
        {"event_id": "e-early", "person_key": "u-b", "occurred_us": 1_000, **order},
        {"event_id": "e-refund", "person_key": "u-b", "occurred_us": 3_000, **order, "status": "refunded"},
    ])
    connection.execute(segment_members.insert(), [
        {"segment_id": "lifecycle:churned", "person_key": "u-b", "entered_us": 5},
        {"segment_id": "tier:silver", "person_key": "u-b", "entered_us": 5},
        {"segment_id": "lifecycle:prospect", "person_key": "u-a", "entered_us": 5},
    ])


async def test_the_first_schema_is_migrated_with_counted_orders_and_membership_per_person(database_url):
    await write_older_schema(database_url, _first_schema)
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        async with database.read() as connection:
            counted = (await connection.execute(select(counted_orders))).all()
            stored = dict((await connection.execute(select(customer_segments))).all())
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            indexes = await connection.run_sync(
                lambda sync: {index["name"] for index in inspect(sync).get_indexes("customer_events")})
        assert [(row.order_id, row.event_id, row.person_key) for row in counted] == [("o-1", "e-early", "u-b")]
        assert stored == {"u-a": "lifecycle:prospect", "u-b": "lifecycle:churned tier:silver"}
        assert not {"segment_members", "pending_evaluations", "fact_versions"} & tables
        assert indexes == {index.name for index in customer_events.indexes}
    finally:
        await database.close()
