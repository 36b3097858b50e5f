"""The campaigns service's tables (SQLAlchemy Core; times as epoch micros, money as integer cents).

Raw order events are stored as they come and every report figure is computed from them at query time, so
arrival order never changes a number. Due work (pending touches, trigger deadlines, scheduled sends) is rows
here, not memory: a restarted or second replica finds it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text

from libs.common.columns import ID, PERSON_KEY, optional, primary, required

metadata = MetaData()

_PERSON = String(PERSON_KEY)
_CAMPAIGN = String(40)
_VARIANT = String(100)

# audience: JSON {kind, segment_id?, send_at?, hours?}; offer: JSON as created; variants: JSON [{name, split_bp,
# message?}]; webhook_disabled: why deliveries stopped (410), or null.
campaigns = Table(
    "campaigns", metadata, *primary(campaign_id=_CAMPAIGN),
    *required(name=String(200), status=String(16), audience=Text, audience_kind=String(32)),
    *optional(segment_id=String(ID)),
    *required(offer=Text, variants=Text, holdout_bp=Integer, window_days=Integer, per_touch_cost_cents=BigInteger),
    *optional(budget_cents=BigInteger),
    *required(webhook_url=String(2048), webhook_secret=String(200)),
    *optional(webhook_disabled=String(200), start_us=BigInteger, end_us=BigInteger, send_us=BigInteger),
    Column("scheduled_sent", Boolean, nullable=False, default=False),
    *optional(paused_reason=String(64)), *required(created_us=BigInteger),
    *optional(activated_us=BigInteger, completed_us=BigInteger),
    Index("ix_campaigns_status_kind", "status", "audience_kind"),
)

# Membership of each segment as published on shoploop.segments.v1 (this service's own mirror: no service
# reads another's tables): each person's latest entry and, once they left, the exit's time, so that the members
# at a past moment (a segment_scheduled campaign's send_at) are known when the send runs later.
segment_members = Table(
    "segment_members", metadata, *primary(segment_id=String(ID), person_key=_PERSON),
    *required(entered_us=BigInteger), *optional(exited_us=BigInteger),
)

# SPEC.md "Assignment": one row per (campaign, person); a person enters a campaign at most once.
assignments = Table(
    "assignments", metadata, *primary(campaign_id=_CAMPAIGN, person_key=_PERSON),
    *required(variant=_VARIANT, assigned_us=BigInteger),
    Index("ix_assignments_person", "person_key"),
    Index("ix_assignments_campaign_time", "campaign_id", "assigned_us"),
)

# One touch per non-holdout assignment. Pending touches are the delivery queue: next_attempt_us is when a
# replica may claim it (a claim moves it one lease ahead, so no other replica sends it meanwhile).
touches = Table(
    "touches", metadata, *primary(touch_id=_CAMPAIGN),
    *required(campaign_id=_CAMPAIGN, person_key=_PERSON, variant=_VARIANT), *optional(coupon_code=String(64)),
    *required(status=String(16), created_us=BigInteger), *optional(delivered_us=BigInteger),
    Column("attempts", Integer, nullable=False, default=0),
    *optional(next_attempt_us=BigInteger, last_error=String(500)),
    Index("ux_touches_campaign_person", "campaign_id", "person_key", unique=True),
    Index("ix_touches_due", "status", "next_attempt_us"),
    Index("ix_touches_person_time", "person_key", "created_us"),
)

# SPEC.md "Coupons": a unique code per touch, bound to the person.
coupons = Table(
    "coupons", metadata, *primary(code=String(64)),
    Column("campaign_id", _CAMPAIGN, nullable=False, index=True),
    Column("person_key", _PERSON, nullable=False, index=True),
    Column("touch_id", _CAMPAIGN, nullable=False, unique=True),
    *optional(expires_us=BigInteger), *required(per_person_limit=Integer),
)

# Raw order events, completed and refunded.
order_events = Table(
    "order_events", metadata, *primary(event_id=String(ID)),
    Column("person_key", _PERSON, nullable=False, index=True),
    Column("order_id", String(ID), nullable=False, index=True),
    *required(status=String(16), occurred_us=BigInteger),
    *optional(total_cents=BigInteger, discount_cents=BigInteger, coupon_code=String(ID), refund_cents=BigInteger),
)

# Counted orders (SPEC.md "Definitions: Orders"): per order_id its earliest completed event, ties by event_id;
# kept by the consumer (the earliest wins whatever the arrival order).
counted_orders = Table(
    "counted_orders", metadata, *primary(order_id=String(ID)),
    *required(event_id=String(ID), person_key=_PERSON, occurred_us=BigInteger, total_cents=BigInteger),
    *optional(discount_cents=BigInteger, coupon_code=String(ID)),
    Index("ix_counted_orders_person", "person_key", "occurred_us"),
    Index("ix_counted_orders_coupon", "coupon_code"),
)

# cart_abandoned / inquiry_unanswered: one row per (campaign, trigger event) until its deadline is decided.
pending_triggers = Table(
    "pending_triggers", metadata, *primary(campaign_id=_CAMPAIGN, event_id=String(ID)),
    *required(person_key=_PERSON, occurred_us=BigInteger, deadline_us=BigInteger),
    Index("ix_pending_triggers_deadline", "deadline_us"),
)

# Outbox of touch records for shoploop.campaigns.v1: committed with the touch's change, published afterwards.
touch_outbox = Table(
    "touch_outbox", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    *required(person_key=_PERSON, payload=Text),
)

# SPEC.md "Spend": per (source, day), replaced on re-send; day is YYYY-MM-DD.
spend = Table(
    "spend", metadata, *primary(source=String(ID), day=String(10)),
    *required(amount_cents=BigInteger, updated_us=BigInteger),
)

# The report kept running (adapters/report_state.py): each assigned person's share as of everything stored, and
# per arm the sum of its persons' shares. Money sums are decimal integers in text: exact past 64 bits on both
# databases (revenue_sq reaches ~40 digits).
report_persons = Table(
    "report_persons", metadata, *primary(campaign_id=_CAMPAIGN, person_key=_PERSON),
    *required(variant=_VARIANT, touched=Boolean, orders=BigInteger, revenue=String(40), refunds=String(40),
              redemptions=BigInteger, discount=String(40), horizon_us=BigInteger),
    Index("ix_report_persons_person", "person_key"),
)

report_arms = Table(
    "report_arms", metadata, *primary(campaign_id=_CAMPAIGN, variant=_VARIANT),
    *required(assigned=BigInteger, touched=BigInteger, conversions=BigInteger, revenue=String(60),
              revenue_sq=String(120), refunds=String(60), redemptions=BigInteger, discount_cost=String(60),
              horizon_us=BigInteger),
)

# Tables holding person keys or coupon codes, rewritten under a pseudonym on erasure (counts kept).
PERSONAL_TABLES = (segment_members, assignments, touches, coupons, order_events, counted_orders, pending_triggers,
                   touch_outbox, report_persons)
