"""Schema steps of the segmentation database, oldest first."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Column, Index, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from libs.common.db import Migration, create_all
from services.segmentation.adapters.facts import earliest_completed_events
from services.segmentation.adapters.segments import STORED_MEMBERS_INDEX, published_rounds, segment_rounds
from services.segmentation.adapters.tables import (
    counted_orders,
    customer_events,
    customer_segments,
    fact_changes,
    fact_changes_pruned,
    membership_changes,
    metadata,
    removed_segments,
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
    # (It also created fact_versions, which nothing reads any more: migration 9 drops it.)
    published_rounds.create(connection, checkfirst=True)
    for index in counted_orders.indexes:
        index.create(connection, checkfirst=True)
    if connection.dialect.name == "postgresql":
        # Pages of stored members walk person keys in code-point order (adapters/segments.py stored_members).
        connection.execute(text('CREATE INDEX IF NOT EXISTS ix_customer_segments_person_bytewise '
                                'ON customer_segments (person_key COLLATE "C")'))


# The log of changed facts (tables.fact_changes): PostgreSQL statement triggers read the transition tables (one
# INSERT per statement, however many rows it changed), but for a first_seen moved by an update; SQLite row
# triggers. Kind 0: a counted order, 1: a first_seen.
_LOG = "INSERT INTO fact_changes (xid, person_key, kind, sign, occurred_us, total_cents) "
_XID = "pg_current_xact_id()::text::bigint"
_FACT_CHANGES_POSTGRESQL = (
    f"""CREATE OR REPLACE FUNCTION fact_changes_orders_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_LOG} SELECT {_XID}, person_key, 0, 1, occurred_us, total_cents FROM new_rows; RETURN NULL; END $$""",
    f"""CREATE OR REPLACE FUNCTION fact_changes_orders_updated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_LOG} SELECT {_XID}, person_key, 0, -1, occurred_us, total_cents FROM old_rows;
    {_LOG} SELECT {_XID}, person_key, 0, 1, occurred_us, total_cents FROM new_rows; RETURN NULL; END $$""",
    f"""CREATE OR REPLACE FUNCTION fact_changes_orders_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_LOG} SELECT {_XID}, person_key, 0, -1, occurred_us, total_cents FROM old_rows; RETURN NULL; END $$""",
    f"""CREATE OR REPLACE FUNCTION fact_changes_profiles_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_LOG} SELECT {_XID}, person_key, 1, 1, first_seen_us, NULL FROM new_rows; RETURN NULL; END $$""",
    # Row-level, with WHEN: the consumer updates profiles in almost every batch (last seen), their first event
    # seldom; a statement trigger would capture every updated row to find the few.
    f"""CREATE OR REPLACE FUNCTION fact_changes_profiles_updated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_LOG} VALUES ({_XID}, OLD.person_key, 1, -1, OLD.first_seen_us, NULL),
                        ({_XID}, NEW.person_key, 1, 1, NEW.first_seen_us, NULL); RETURN NULL; END $$""",
    """CREATE TRIGGER fact_changes_profiles_updated AFTER UPDATE ON profiles FOR EACH ROW
    WHEN (OLD.first_seen_us IS DISTINCT FROM NEW.first_seen_us) EXECUTE FUNCTION fact_changes_profiles_updated()""",
    f"""CREATE OR REPLACE FUNCTION fact_changes_profiles_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_LOG} SELECT {_XID}, person_key, 1, -1, first_seen_us, NULL FROM old_rows; RETURN NULL; END $$""",
    *(f"""CREATE TRIGGER fact_changes_{name}_{change} AFTER {verb} ON {table}
    REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION fact_changes_{name}_{change}()"""
      for name, table, change, verb, tables in (
          ("orders", "counted_orders", "inserted", "INSERT", "NEW TABLE AS new_rows"),
          ("orders", "counted_orders", "updated", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
          ("orders", "counted_orders", "deleted", "DELETE", "OLD TABLE AS old_rows"),
          ("profiles", "profiles", "inserted", "INSERT", "NEW TABLE AS new_rows"),
          ("profiles", "profiles", "deleted", "DELETE", "OLD TABLE AS old_rows"))),
)
_SQLITE_LOG = "INSERT INTO fact_changes (person_key, kind, sign, occurred_us, total_cents) VALUES "
_FACT_CHANGES_SQLITE = (
    f"""CREATE TRIGGER fact_changes_orders_inserted AFTER INSERT ON counted_orders BEGIN
    {_SQLITE_LOG} (NEW.person_key, 0, 1, NEW.occurred_us, NEW.total_cents); END""",
    f"""CREATE TRIGGER fact_changes_orders_updated AFTER UPDATE ON counted_orders BEGIN
    {_SQLITE_LOG} (OLD.person_key, 0, -1, OLD.occurred_us, OLD.total_cents);
    {_SQLITE_LOG} (NEW.person_key, 0, 1, NEW.occurred_us, NEW.total_cents); END""",
    f"""CREATE TRIGGER fact_changes_orders_deleted AFTER DELETE ON counted_orders BEGIN
    {_SQLITE_LOG} (OLD.person_key, 0, -1, OLD.occurred_us, OLD.total_cents); END""",
    f"""CREATE TRIGGER fact_changes_profiles_inserted AFTER INSERT ON profiles BEGIN
    {_SQLITE_LOG} (NEW.person_key, 1, 1, NEW.first_seen_us, NULL); END""",
    f"""CREATE TRIGGER fact_changes_profiles_updated AFTER UPDATE OF first_seen_us ON profiles
    WHEN NEW.first_seen_us <> OLD.first_seen_us BEGIN
    {_SQLITE_LOG} (OLD.person_key, 1, -1, OLD.first_seen_us, NULL);
    {_SQLITE_LOG} (NEW.person_key, 1, 1, NEW.first_seen_us, NULL); END""",
    f"""CREATE TRIGGER fact_changes_profiles_deleted AFTER DELETE ON profiles BEGIN
    {_SQLITE_LOG} (OLD.person_key, 1, -1, OLD.first_seen_us, NULL); END""",
)


def _fact_changes_logged(connection: Connection) -> None:
    for table in (fact_changes, fact_changes_pruned):
        table.create(connection, checkfirst=True)
    postgresql = connection.dialect.name == "postgresql"
    for statement in _FACT_CHANGES_POSTGRESQL if postgresql else _FACT_CHANGES_SQLITE:
        connection.execute(text(statement))
    if postgresql:  # readers look rows up by the writing transaction's id (adapters/fact_changes.py)
        connection.execute(text("CREATE INDEX IF NOT EXISTS ix_fact_changes_xid ON fact_changes (xid)"))


def _stored_members_by_key(connection: Connection) -> None:
    # Pages of a segment's stored members merge the person ranges of the keys holding it (segments.stored_members).
    connection.execute(text(STORED_MEMBERS_INDEX[connection.dialect.name]))
    # The walk along person keys alone (migration 5) is no longer how pages are read: one index less to write.
    connection.execute(text("DROP INDEX IF EXISTS ix_customer_segments_person_bytewise"))


def _drop_fact_versions(connection: Connection) -> None:
    connection.execute(text("DROP TABLE IF EXISTS fact_versions"))


def _outbox_row_per_person(connection: Connection) -> None:
    # Records still queued in segment_changes are published first (membership.publish_queued_changes).
    for table in (membership_changes, removed_segments):
        table.create(connection, checkfirst=True)


# Step 1 creates the current tables on a new database; later steps bring an older database to the same.
MIGRATIONS = [
    Migration(1, "customer facts, segments and membership", create_all(metadata)),
    Migration(2, "counted orders kept by the consumer; stored membership one row per person; pending "
                 "evaluations in memory", _derived_facts_and_membership_per_person),
    Migration(3, "customer events indexed by person and type", _events_indexed_by_person_and_type),
    Migration(4, "the last membership round, forgotten when a profile is erased", _last_round_kept_until_an_erasure),
    Migration(5, "read side: fact versions for cached RFM cuts, counted orders by time, the last published "
                 "round, stored members by person key in code-point order", _read_side_state),
    Migration(6, "the log of changed facts the read side's counts follow", _fact_changes_logged),
    Migration(7, "stored members by membership key and person key", _stored_members_by_key),
    Migration(8, "the outbox of membership changes one row per person and evaluation, records rendered when "
                 "published; names of removed rule segments", _outbox_row_per_person),
    Migration(9, "fact versions dropped: the read side follows the log of changed facts", _drop_fact_versions),
]
