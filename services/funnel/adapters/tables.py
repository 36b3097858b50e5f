"""The funnel service's own tables: behaviour events as normalised facts, their order items, funnel definitions.

Answers are computed at query time from these raw facts (SPEC.md: exact whatever the arrival order), so the
tables hold what happened, never running totals. Times are epoch microseconds, money integer cents: exact
integer compares and sums on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

from libs.common.columns import ID, PERSON_KEY, optional, primary, required
from libs.common.db import Migration, create_all

metadata = MetaData()

events = Table(
    "events", metadata, *primary(event_id=String(ID)),
    *required(type=String(16), person_key=String(PERSON_KEY), occurred_us=BigInteger, source=String(256)),
    *optional(product_id=String(ID), product_name=Text, category=Text, price_cents=BigInteger,
              declared_tier=String(32)),
    *required(quantity=Integer),
    *optional(inquiry_id=String(ID), response_seconds=Float, order_id=String(ID), order_status=String(16),
              total_cents=BigInteger, discount_cents=BigInteger, coupon_code=String(ID), refund_cents=BigInteger,
              rating=Integer),
    # The write order: rows take increasing values under the table's write lock, so a reader that has every
    # row up to N has a complete prefix (the DuckDB copy follows it, adapters/mirror.py). An erasure gives
    # the rewritten rows new values and sets `revised`.
    Column("seq", BigInteger, nullable=False),
    Column("revised", Boolean, nullable=False, default=False),
    Index("ix_events_seq", "seq", unique=True),
    Index("ix_events_occurred", "occurred_us"),
    # Only order events carry an order_id, and only they are looked up by it (order_id = / IN, which both
    # databases know implies IS NOT NULL): the other events stay out of the index (and out of its writes).
    Index("ix_events_order", "order_id", "occurred_us", sqlite_where=text("order_id IS NOT NULL"),
          postgresql_where=text("order_id IS NOT NULL")),
    Index("ix_events_person", "person_key", "occurred_us"),
    Index("ix_events_product", "product_id", "occurred_us"),
)

order_items = Table(
    "order_items", metadata, *primary(event_id=String(ID), line=Integer),
    *required(product_id=String(ID)), *optional(category=Text),
    *required(quantity=Integer, unit_price_cents=BigInteger),
    Index("ix_order_items_product", "product_id"),
)

funnels = Table(
    "funnels", metadata, *primary(funnel_id=String(64)),
    # The definition as JSON ({steps, window_seconds, unit}): read whole, never queried by part.
    *required(name=String(200), definition=Text, created_us=BigInteger),
    Index("ix_funnels_created", "created_us", "funnel_id"),
)

def _events_in_write_order(connection: Connection) -> None:
    if "seq" in {column["name"] for column in inspect(connection).get_columns("events")}:
        return  # created by step 1 with today's columns
    connection.execute(text("ALTER TABLE events ADD COLUMN seq BIGINT"))
    connection.execute(text("ALTER TABLE events ADD COLUMN revised BOOLEAN NOT NULL DEFAULT FALSE"))
    connection.execute(text(
        "UPDATE events SET seq = numbered.n FROM (SELECT event_id, row_number() OVER (ORDER BY occurred_us, event_id)"
        " AS n FROM events) AS numbered WHERE events.event_id = numbered.event_id"
    ))
    for index in events.indexes:
        if index.name == "ix_events_seq":
            index.create(connection)


def _order_index_of_orders_only(connection: Connection) -> None:
    connection.execute(text("DROP INDEX IF EXISTS ix_events_order"))
    for index in events.indexes:
        if index.name == "ix_events_order":
            index.create(connection)


# Step 1 creates the current tables on a new database; later steps bring an older database to the same.
MIGRATIONS = [
    Migration(1, "events, order items, funnels", create_all(metadata)),
    Migration(2, "events numbered in write order (seq) for the analytical copy", _events_in_write_order),
    Migration(3, "events by order_id: order events only (partial index)", _order_index_of_orders_only),
]
