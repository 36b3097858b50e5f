"""The segmentation service's tables (SQLAlchemy Core; times as epoch micros, money as cents).

Facts are stored raw, one row per event, and figures are computed from them at query time, so the
arrival order of events never changes a number.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, SmallInteger, String, Table, Text

from libs.common.columns import ID, PERSON_KEY, optional, primary, required

metadata = MetaData()

_PERSON = String(PERSON_KEY)
_EVENT_ID = String(ID)
_SEQ = BigInteger().with_variant(Integer, "sqlite")

# One row per person: first and last event of any kind, and the channel source of the first one.
profiles = Table(
    "profiles", metadata, *primary(person_key=_PERSON),
    Column("first_seen_us", BigInteger, nullable=False, index=True),
    *required(first_event_id=_EVENT_ID, acquisition_source=String(256), last_seen_us=BigInteger,
              last_event_id=_EVENT_ID),
)

# Every event of the person (any type): last seen at as_of, and "count of type in the last N days".
customer_events = Table(
    "customer_events", metadata, *primary(event_id=_EVENT_ID),
    *required(person_key=_PERSON, type=String(16), occurred_us=BigInteger),
    # Per person and type: a profile's counts and the rule windows of a few persons.
    Index("ix_customer_events_person_type", "person_key", "type", "occurred_us"),
    Index("ix_customer_events_type", "type", "occurred_us"),
)

# Raw order events, completed and refunded; counted orders are derived at query time.
customer_orders = Table(
    "customer_orders", metadata, *primary(event_id=_EVENT_ID),
    Column("person_key", _PERSON, nullable=False, index=True),
    Column("order_id", _EVENT_ID, nullable=False, index=True),
    *required(status=String(16), occurred_us=BigInteger), *optional(total_cents=BigInteger, refund_cents=BigInteger),
    Index("ix_customer_orders_status_time", "status", "occurred_us"),
)

# Counted orders (SPEC.md "Definitions: Orders"): per order_id its earliest completed event, ties by
# event_id. Which event that is does not depend on as_of or on arrival order (the earliest wins), so the
# consumer keeps it up to date and every figure sums it in SQL.
counted_orders = Table(
    "counted_orders", metadata, *primary(order_id=_EVENT_ID),
    *required(event_id=_EVENT_ID, person_key=_PERSON, occurred_us=BigInteger, total_cents=BigInteger),
    Index("ix_counted_orders_person", "person_key", "occurred_us"),
    # Persons with an order in a few narrow ranges: whose RFM figures moved between two moments (rfm_cuts.py).
    Index("ix_counted_orders_time", "occurred_us"),
)

# identify traits, one row per call: merged in (occurred_at, event_id) order at query time.
customer_traits = Table(
    "customer_traits", metadata, *primary(event_id=_EVENT_ID),
    Column("person_key", _PERSON, nullable=False, index=True),
    *required(occurred_us=BigInteger, traits=Text),
)

segments = Table(
    "segments", metadata, *primary(segment_id=String(64)),
    Column("name", String(200), nullable=False, unique=True),
    *required(rule=Text, created_us=BigInteger),
)

# Membership as last published, one row per person: the segment ids, sorted, joined by spaces. A new
# evaluation compares one string per person; the difference is what goes on the topic.
customer_segments = Table(
    "customer_segments", metadata, *primary(person_key=_PERSON), *required(segment_ids=Text),
)

# Outbox: one row per person and evaluation whose membership changed, committed with the new membership; its
# records (the exits, then the entries) are rendered when published (membership.py), then the row is deleted.
# A first evaluation queues a row per customer: compact rows, a record's change_id derived from its row.
membership_changes = Table(
    "membership_changes", metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    # evaluation: drawn at random per evaluation, the start of its change ids. person_key has no index: only an
    # erasure looks rows up by person (a scan of a table that is empty but for moments), and a first evaluation
    # writes a row per customer. segment_ids_*: membership keys (segments.membership_key), "" for none.
    *required(evaluation=BigInteger, as_of_us=BigInteger, person_key=_PERSON, segment_ids_before=Text,
              segment_ids_after=Text),
)

# Name of each deleted rule segment whose exits may still be queued (a record carries the segment's name); rows go
# once the outbox is empty.
removed_segments = Table(
    "removed_segments", metadata, *primary(segment_id=String(64)), *required(name=String(200)),
)

# The outbox before migration 8: one row per record with its JSON payload. Nothing queues here any more; records
# an older version left are published before those of membership_changes.
segment_changes = Table(
    "segment_changes", metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("change_id", String(64), nullable=False, unique=True),
    Column("person_key", _PERSON, nullable=False, index=True),
    *required(payload=Text),
)

# What changed in the facts the read side counts from, written by triggers (migration 6) whatever changes them (the
# consumer, an erasure): per counted order inserted, replaced or deleted, the row as it was (sign -1) and as it is
# (+1); likewise a profile's first_seen_us. The read side's counts at a moment move through these rows instead of
# being counted again (population_state.py). ``xid`` (PostgreSQL: the writing transaction) tells a reader which rows
# were not yet visible to its last snapshot; SQLite commits one writer at a time, so there seq order is commit order.
# Erasure puts the person's pseudonym in place of the key; the scheduler deletes rows older than a few rounds.
FACT_CHANGE_ORDER, FACT_CHANGE_FIRST_SEEN = 0, 1
fact_changes = Table(
    "fact_changes", metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("xid", BigInteger, nullable=True),  # indexed on PostgreSQL only (migration 6): NULL on SQLite
    # person_key: no index, only an erasure looks rows up by person.
    *required(person_key=_PERSON, kind=SmallInteger, sign=SmallInteger, occurred_us=BigInteger),
    *optional(total_cents=BigInteger),
    sqlite_autoincrement=True,  # seq never reused after a prune: a reader's position stays meaningful
)

# Up to where fact_changes rows may have been deleted (one row): a reader whose last position is below must count
# again.
fact_changes_pruned = Table(
    "fact_changes_pruned", metadata, *primary(scope=String(16)), *required(position=BigInteger),
)

PERSONAL_TABLES = (profiles, customer_events, customer_orders, counted_orders, customer_traits, customer_segments,
                   membership_changes, segment_changes)
