"""The segmentation service's tables (SQLAlchemy Core; times as epoch micros, money as cents).

Facts are stored raw, one row per event, and figures are computed from them at query time, so the
arrival order of events never changes a number.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

from libs.common.db import Migration, create_all

metadata = MetaData()

_PERSON = 300  # "anon:" + a 256-character anonymous_id
_EVENT_ID = 256

# One row per person: first and last event of any kind, and the channel source of the first one.
profiles = Table(
    "profiles",
    metadata,
    Column("person_key", String(_PERSON), primary_key=True),
    Column("first_seen_us", BigInteger, nullable=False, index=True),
    Column("first_event_id", String(_EVENT_ID), nullable=False),
    Column("acquisition_source", String(256), nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
    Column("last_event_id", String(_EVENT_ID), nullable=False),
)

# Every event of the person (any type): last seen at as_of, and "count of type in the last N days".
customer_events = Table(
    "customer_events",
    metadata,
    Column("event_id", String(_EVENT_ID), primary_key=True),
    Column("person_key", String(_PERSON), nullable=False),
    Column("type", String(16), nullable=False),
    Column("occurred_us", BigInteger, nullable=False),
    Index("ix_customer_events_person", "person_key", "occurred_us"),
    Index("ix_customer_events_type", "type", "occurred_us"),
)

# Raw order events, completed and refunded; counted orders are derived at query time.
customer_orders = Table(
    "customer_orders",
    metadata,
    Column("event_id", String(_EVENT_ID), primary_key=True),
    Column("person_key", String(_PERSON), nullable=False, index=True),
    Column("order_id", String(_EVENT_ID), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("occurred_us", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=True),
    Column("refund_cents", BigInteger, nullable=True),
    Index("ix_customer_orders_status_time", "status", "occurred_us"),
)

# identify traits, one row per call: merged in (occurred_at, event_id) order at query time.
customer_traits = Table(
    "customer_traits",
    metadata,
    Column("event_id", String(_EVENT_ID), primary_key=True),
    Column("person_key", String(_PERSON), nullable=False, index=True),
    Column("occurred_us", BigInteger, nullable=False),
    Column("traits", Text, nullable=False),
)

segments = Table(
    "segments",
    metadata,
    Column("segment_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("rule", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
)

# Membership as last published: the diff against a new evaluation is what goes on the topic.
segment_members = Table(
    "segment_members",
    metadata,
    Column("segment_id", String(64), primary_key=True),
    Column("person_key", String(_PERSON), primary_key=True),
    Column("entered_us", BigInteger, nullable=False),
    Index("ix_segment_members_person", "person_key"),
)

# Outbox: membership changes committed with the new membership, published afterwards, then deleted.
segment_changes = Table(
    "segment_changes",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("change_id", String(64), nullable=False, unique=True),
    Column("person_key", String(_PERSON), nullable=False, index=True),
    Column("payload", Text, nullable=False),
)

# Persons whose facts changed since their last evaluation; the token detects a change during one.
pending_evaluations = Table(
    "pending_evaluations",
    metadata,
    Column("person_key", String(_PERSON), primary_key=True),
    Column("token", String(32), nullable=False),
)

PERSONAL_TABLES = (profiles, customer_events, customer_orders, customer_traits, segment_members,
                   segment_changes, pending_evaluations)

MIGRATIONS = [Migration(1, "customer facts, segments and membership", create_all(metadata))]
