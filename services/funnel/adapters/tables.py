"""The funnel service's own tables: behaviour events as normalised facts, their order items, funnel definitions.

Answers are computed at query time from these raw facts (SPEC.md: exact whatever the arrival order), so the
tables hold what happened, never running totals. Times are epoch microseconds, money integer cents: exact
integer compares and sums on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

from libs.common.db import Migration, create_all

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("event_id", String(256), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("person_key", String(300), nullable=False),
    Column("occurred_us", BigInteger, nullable=False),
    Column("source", String(256), nullable=False),
    Column("product_id", String(256)),
    Column("product_name", Text),
    Column("category", Text),
    Column("price_cents", BigInteger),
    Column("declared_tier", String(32)),
    Column("quantity", Integer, nullable=False),
    Column("inquiry_id", String(256)),
    Column("response_seconds", Float),
    Column("order_id", String(256)),
    Column("order_status", String(16)),
    Column("total_cents", BigInteger),
    Column("discount_cents", BigInteger),
    Column("coupon_code", String(256)),
    Column("refund_cents", BigInteger),
    Column("rating", Integer),
    Index("ix_events_occurred", "occurred_us"),
    Index("ix_events_order", "order_id", "occurred_us"),
    Index("ix_events_person", "person_key", "occurred_us"),
    Index("ix_events_product", "product_id", "occurred_us"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("event_id", String(256), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("product_id", String(256), nullable=False),
    Column("category", Text),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_cents", BigInteger, nullable=False),
    Index("ix_order_items_product", "product_id"),
)

funnels = Table(
    "funnels",
    metadata,
    Column("funnel_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    # The definition as JSON ({steps, window_seconds, unit}): read whole, never queried by part.
    Column("definition", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Index("ix_funnels_created", "created_us", "funnel_id"),
)

MIGRATIONS = [Migration(1, "events, order items, funnels", create_all(metadata))]
