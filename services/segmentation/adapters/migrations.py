"""Schema steps of the segmentation database, oldest first."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Column, Index, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from libs.common.db import Migration, create_all
from services.segmentation.adapters.facts import earliest_completed_events
from services.segmentation.adapters.segments import published_rounds, segment_rounds
from services.segmentation.adapters.tables import (
    counted_orders,
    customer_events,
    customer_segments,
    fact_versions,
    metadata,
)
from services.segmentation.segments import membership_key


def _derived_facts_and_membership_per_person(connection: Connection) -> None:
    # Persons waiting for evaluation are kept in memory now: a restart evaluates everyone anyway.
    Table("pending_evaluations", MetaData()).drop(connection, checkfirst=True)
    for table in (counted_orders, customer_segments):
        table.create(connection, checkfirst=True)
    columns = [column.name for column in counted_orders.c]
    connection.execute(counted_orders.insert().from_select(columns, earliest_completed_events(connection)))
    if inspect(connection).has_table("segment_members"):
        pairs = Table("segment_members", MetaData(), Column("segment_id", String(64)), Column("person_key", String(300)))
        by_person: defaultdict[str, list[str]] = defaultdict(list)
        for segment_id, person in connection.execute(select(pairs.c.segment_id, pairs.c.person_key)):
            by_person[person].append(segment_id)
        if by_person:
            connection.execute(customer_segments.insert(), [
                {"person_key": person, "segment_ids": membership_key(ids)} for person, ids in by_person.items()
            ])
        pairs.drop(connection)


def _events_indexed_by_person_and_type(connection: Connection) -> None:
    events_then = Table("customer_events", MetaData(), Column("person_key", String(300)))
    Index("ix_customer_events_person", events_then.c.person_key).drop(connection, checkfirst=True)
    for index in customer_events.indexes:
        index.create(connection, checkfirst=True)


_FORGET_ROUND_POSTGRESQL = (
    """CREATE OR REPLACE FUNCTION segment_rounds_forget() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN DELETE FROM segment_rounds; RETURN NULL; END $$""",
    """CREATE TRIGGER profiles_erased_forget_round AFTER DELETE ON profiles
    FOR EACH STATEMENT EXECUTE FUNCTION segment_rounds_forget()""",
)
_FORGET_ROUND_SQLITE = (
    """CREATE TRIGGER profiles_erased_forget_round AFTER DELETE ON profiles
    BEGIN DELETE FROM segment_rounds; END""",
)


def _last_round_kept_until_an_erasure(connection: Connection) -> None:
    # Profiles are deleted only by an erasure, which can make another person's order the counted one
    # without any new event of theirs: the next round then looks at everyone (adapters/segments.py).
    segment_rounds.create(connection, checkfirst=True)
    postgresql = connection.dialect.name == "postgresql"
    for statement in _FORGET_ROUND_POSTGRESQL if postgresql else _FORGET_ROUND_SQLITE:
        connection.execute(text(statement))


def _read_side_state(connection: Connection) -> None:
    for table in (fact_versions, published_rounds):
        table.create(connection, checkfirst=True)
    for index in counted_orders.indexes:
        index.create(connection, checkfirst=True)
    if connection.dialect.name == "postgresql":
        # Pages of stored members walk person keys in code-point order (adapters/segments.py stored_members).
        connection.execute(text('CREATE INDEX IF NOT EXISTS ix_customer_segments_person_bytewise '
                                'ON customer_segments (person_key COLLATE "C")'))


# Step 1 creates the current tables on a new database; later steps bring an older database to the same.
MIGRATIONS = [
    Migration(1, "customer facts, segments and membership", create_all(metadata)),
    Migration(2, "counted orders kept by the consumer; stored membership one row per person; pending "
                 "evaluations in memory", _derived_facts_and_membership_per_person),
    Migration(3, "customer events indexed by person and type", _events_indexed_by_person_and_type),
    Migration(4, "the last membership round, forgotten when a profile is erased", _last_round_kept_until_an_erasure),
    Migration(5, "read side: fact versions for cached RFM cuts, counted orders by time, the last published "
                 "round, stored members by person key in code-point order", _read_side_state),
]
