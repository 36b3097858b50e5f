"""The campaigns service's tables (SQLAlchemy Core; times as epoch micros, money as integer cents).

Raw order events are stored as they come and every report figure is computed from them at query time, so
arrival order never changes a number. Due work (pending touches, trigger deadlines, scheduled sends) is rows
here, not memory: a restarted or second replica finds it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

_PERSON = 300  # "anon:" + a 256-character anonymous_id
_ID = 256

campaigns = Table(
    "campaigns",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("audience", Text, nullable=False),  # JSON {kind, segment_id?, send_at?, hours?}
    Column("audience_kind", String(32), nullable=False),
    Column("segment_id", String(_ID), nullable=True),
    Column("offer", Text, nullable=False),  # JSON as created
    Column("variants", Text, nullable=False),  # JSON [{name, split_bp, message?}]
    Column("holdout_bp", Integer, nullable=False),
    Column("window_days", Integer, nullable=False),
    Column("per_touch_cost_cents", BigInteger, nullable=False),
    Column("budget_cents", BigInteger, nullable=True),
    Column("webhook_url", String(2048), nullable=False),
    Column("webhook_secret", String(200), nullable=False),
    Column("webhook_disabled", String(200), nullable=True),  # why deliveries stopped (410), or null
    Column("start_us", BigInteger, nullable=True),
    Column("end_us", BigInteger, nullable=True),
    Column("send_us", BigInteger, nullable=True),
    Column("scheduled_sent", Boolean, nullable=False, default=False),
    Column("paused_reason", String(64), nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("activated_us", BigInteger, nullable=True),
    Column("completed_us", BigInteger, nullable=True),
    Index("ix_campaigns_status_kind", "status", "audience_kind"),
)

# Membership of each segment as published on shoploop.segments.v1 (this service's own mirror: no service
# reads another's tables): each person's latest entry and, once they left, the exit's time, so that the members
# at a past moment (a segment_scheduled campaign's send_at) are known when the send runs later.
segment_members = Table(
    "segment_members",
    metadata,
    Column("segment_id", String(_ID), primary_key=True),
    Column("person_key", String(_PERSON), primary_key=True),
    Column("entered_us", BigInteger, nullable=False),
    Column("exited_us", BigInteger, nullable=True),
)

# SPEC.md "Assignment": one row per (campaign, person); a person enters a campaign at most once.
assignments = Table(
    "assignments",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("person_key", String(_PERSON), primary_key=True),
    Column("variant", String(100), nullable=False),
    Column("assigned_us", BigInteger, nullable=False),
    Index("ix_assignments_person", "person_key"),
    Index("ix_assignments_campaign_time", "campaign_id", "assigned_us"),
)

# One touch per non-holdout assignment. Pending touches are the delivery queue: next_attempt_us is when a
# replica may claim it (a claim moves it one lease ahead, so no other replica sends it meanwhile).
touches = Table(
    "touches",
    metadata,
    Column("touch_id", String(40), primary_key=True),
    Column("campaign_id", String(40), nullable=False),
    Column("person_key", String(_PERSON), nullable=False),
    Column("variant", String(100), nullable=False),
    Column("coupon_code", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("delivered_us", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_us", BigInteger, nullable=True),
    Column("last_error", String(500), nullable=True),
    Index("ux_touches_campaign_person", "campaign_id", "person_key", unique=True),
    Index("ix_touches_due", "status", "next_attempt_us"),
    Index("ix_touches_person_time", "person_key", "created_us"),
)

# SPEC.md "Coupons": a unique code per touch, bound to the person.
coupons = Table(
    "coupons",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("campaign_id", String(40), nullable=False, index=True),
    Column("person_key", String(_PERSON), nullable=False, index=True),
    Column("touch_id", String(40), nullable=False, unique=True),
    Column("expires_us", BigInteger, nullable=True),
    Column("per_person_limit", Integer, nullable=False),
)

# Raw order events, completed and refunded.
order_events = Table(
    "order_events",
    metadata,
    Column("event_id", String(_ID), primary_key=True),
    Column("person_key", String(_PERSON), nullable=False, index=True),
    Column("order_id", String(_ID), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("occurred_us", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=True),
    Column("discount_cents", BigInteger, nullable=True),
    Column("coupon_code", String(_ID), nullable=True),
    Column("refund_cents", BigInteger, nullable=True),
)

# Counted orders (SPEC.md "Definitions: Orders"): per order_id its earliest completed event, ties by event_id;
# kept by the consumer (the earliest wins whatever the arrival order).
counted_orders = Table(
    "counted_orders",
    metadata,
    Column("order_id", String(_ID), primary_key=True),
    Column("event_id", String(_ID), nullable=False),
    Column("person_key", String(_PERSON), nullable=False),
    Column("occurred_us", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=False),
    Column("discount_cents", BigInteger, nullable=True),
    Column("coupon_code", String(_ID), nullable=True),
    Index("ix_counted_orders_person", "person_key", "occurred_us"),
    Index("ix_counted_orders_coupon", "coupon_code"),
)

# cart_abandoned / inquiry_unanswered: one row per (campaign, trigger event) until its deadline is decided.
pending_triggers = Table(
    "pending_triggers",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("event_id", String(_ID), primary_key=True),
    Column("person_key", String(_PERSON), nullable=False),
    Column("occurred_us", BigInteger, nullable=False),
    Column("deadline_us", BigInteger, nullable=False),
    Index("ix_pending_triggers_deadline", "deadline_us"),
)

# Outbox of touch records for shoploop.campaigns.v1: committed with the touch's change, published afterwards.
touch_outbox = Table(
    "touch_outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("person_key", String(_PERSON), nullable=False),
    Column("payload", Text, nullable=False),
)

# SPEC.md "Spend": per (source, day), replaced on re-send.
spend = Table(
    "spend",
    metadata,
    Column("source", String(_ID), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD
    Column("amount_cents", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# The report kept running (adapters/report_state.py): each assigned person's share as of everything stored, and
# per arm the sum of its persons' shares. Money sums are decimal integers in text: exact past 64 bits on both
# databases (revenue_sq reaches ~40 digits).
report_persons = Table(
    "report_persons",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("person_key", String(_PERSON), primary_key=True),
    Column("variant", String(100), nullable=False),
    Column("touched", Boolean, nullable=False),
    Column("orders", BigInteger, nullable=False),
    Column("revenue", String(40), nullable=False),
    Column("refunds", String(40), nullable=False),
    Column("redemptions", BigInteger, nullable=False),
    Column("discount", String(40), nullable=False),
    Column("horizon_us", BigInteger, nullable=False),
    Index("ix_report_persons_person", "person_key"),
)

report_arms = Table(
    "report_arms",
    metadata,
    Column("campaign_id", String(40), primary_key=True),
    Column("variant", String(100), primary_key=True),
    Column("assigned", BigInteger, nullable=False),
    Column("touched", BigInteger, nullable=False),
    Column("conversions", BigInteger, nullable=False),
    Column("revenue", String(60), nullable=False),
    Column("revenue_sq", String(120), nullable=False),
    Column("refunds", String(60), nullable=False),
    Column("redemptions", BigInteger, nullable=False),
    Column("discount_cost", String(60), nullable=False),
    Column("horizon_us", BigInteger, nullable=False),
)

# Tables holding person keys or coupon codes, rewritten under a pseudonym on erasure (counts kept).
PERSONAL_TABLES = (segment_members, assignments, touches, coupons, order_events, counted_orders, pending_triggers,
                   touch_outbox, report_persons)
