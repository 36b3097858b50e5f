"""Entering persons into a campaign (SPEC.md "Campaigns": Assignment, Touches, Coupons): the assignment, then for
a non-holdout arm its one touch (suppressed over the frequency cap) with a unique coupon code, and the touch's
record queued for shoploop.campaigns.v1, and the report shares of the new assignments, all in the caller's transaction. Enrolments are serialised by the
report lock, so two campaigns entering one person at once both see the other's touch under the frequency cap."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows, chunks
from libs.common.events import format_timestamp, from_epoch_micros
from services.campaigns.adapters.campaigns import CampaignRecord
from services.campaigns.adapters.report_state import add_assignments, lock_report
from services.campaigns.adapters.tables import assignments, coupons, touch_outbox, touches
from services.campaigns.domain.assignment import HOLDOUT, Variant, arm_of, in_global_holdout
from services.campaigns.domain.coupons import CouponOffer, expires_at, new_code
from services.campaigns.domain.frequency import FrequencyCap, suppressed

PENDING, DELIVERED, FAILED, SUPPRESSED = "pending", "delivered", "failed", "suppressed"
# Touch statuses that use up the frequency cap: sent or about to be.
CAPPED_STATUSES = (PENDING, DELIVERED)
_TOUCH_NAMESPACE = uuid.UUID("9a3c1f0e-5b7d-4c2a-8e61-2f4d0b9c7a15")

_ASSIGNMENT_ROWS = BulkRows(assignments, ("campaign_id", "person_key", "variant", "assigned_us"))
_TOUCH_ROWS = BulkRows(touches, ("touch_id", "campaign_id", "person_key", "variant", "coupon_code", "status",
                                 "created_us", "attempts", "next_attempt_us"))
_COUPON_ROWS = BulkRows(coupons, ("code", "campaign_id", "person_key", "touch_id", "expires_us", "per_person_limit"))
_OUTBOX_ROWS = BulkRows(touch_outbox, ("person_key", "payload"))
_BULK = 20_000


@dataclass(frozen=True)
class EnrolmentRules:
    """What the deployment decides for every campaign: the global holdout and the frequency cap (settings)."""

    global_holdout_bp: int
    cap: FrequencyCap


def touch_id(campaign_id: str, person_key: str) -> str:
    """A touch's id, the same whoever creates it: the webhook-id of every attempt (never two ids for one touch)."""
    return "msg_" + uuid.uuid5(_TOUCH_NAMESPACE, f"{campaign_id}:{person_key}").hex


def variants_of(campaign: CampaignRecord) -> list[Variant]:
    return [Variant(v["name"], v["split_bp"], v.get("message")) for v in campaign.variants]


def coupon_offer(offer: dict[str, Any]) -> CouponOffer | None:
    """The stored offer as the domain's CouponOffer; None for a message-only offer."""
    if offer.get("kind") != "coupon":
        return None

    def money(name: str) -> Decimal | None:
        value = offer.get(name)
        return None if value is None else Decimal(str(value))

    return CouponOffer(percent_off=money("percent_off"), amount_off=money("amount_off"),
                       min_spend=money("min_spend"), expires_in_days=offer.get("expires_in_days"),
                       per_person_limit=offer.get("per_person_limit") or 1)


def touch_record(touch: dict[str, Any]) -> bytes:
    """A touch as published on shoploop.campaigns.v1 (one record per status it reaches; ``event_id`` is unique)."""
    return orjson.dumps({"event_id": f"{touch['touch_id']}:{touch['status']}", **touch})


def touch_public(row: Any) -> dict[str, Any]:
    """A stored touch row as the API and the topic show it."""
    return {
        "touch_id": row.touch_id, "campaign_id": row.campaign_id, "variant": row.variant,
        "person_key": row.person_key, "coupon_code": row.coupon_code, "status": row.status,
        "created_at": format_timestamp(from_epoch_micros(row.created_us)),
        "delivered_at": None if row.delivered_us is None else format_timestamp(from_epoch_micros(row.delivered_us)),
    }


async def queue_touch_records(connection: AsyncConnection, touches_now: Sequence[dict[str, Any]]) -> None:
    dialect = connection.dialect.name
    rows = [(touch["person_key"], touch_record(touch).decode()) for touch in touches_now]
    for start in range(0, len(rows), _BULK):
        await connection.execute(_OUTBOX_ROWS.insert(dialect), _OUTBOX_ROWS.params(dialect, rows[start:start + _BULK]))


async def _recent_touch_times(connection: AsyncConnection, persons: Sequence[str], since_us: int) -> dict[str, list[int]]:
    times: dict[str, list[int]] = {}
    t = touches.c
    for batch in chunks(persons):
        query = select(t.person_key, t.created_us).where(t.person_key.in_(batch), t.created_us > since_us,
                                                          t.status.in_(CAPPED_STATUSES))
        for person, created_us in await connection.execute(query):
            times.setdefault(person, []).append(created_us)
    return times


async def enrol(connection: AsyncConnection, campaign: CampaignRecord, entrants: Sequence[tuple[str, int]], *,
                rules: EnrolmentRules, now_us: int) -> int:
    """Assign ``(person_key, assigned_us)`` entrants not in the campaign yet (nor in the global holdout); create
    their touches and coupons. Returns how many were assigned."""
    await lock_report(connection)
    dialect = connection.dialect.name
    variants = variants_of(campaign)
    firsts: dict[str, int] = {}
    for person, assigned_us in entrants:
        if person not in firsts and not in_global_holdout(person, rules.global_holdout_bp):
            firsts[person] = assigned_us
    if not firsts:
        return 0
    rows = [(campaign.campaign_id, person, arm_of(campaign.campaign_id, person, campaign.holdout_bp, variants),
             assigned_us) for person, assigned_us in firsts.items()]
    statement = (_ASSIGNMENT_ROWS.insert(dialect)
                 .on_conflict_do_nothing(index_elements=["campaign_id", "person_key"])
                 .returning(assignments.c.person_key))
    new: set[str] = set()
    for start in range(0, len(rows), _BULK):
        result = await connection.execute(statement, _ASSIGNMENT_ROWS.params(dialect, rows[start:start + _BULK]))
        new.update(result.scalars())
    treated = [(person, arm) for _, person, arm, _ in rows if person in new and arm != HOLDOUT]
    if treated:
        await _touch(connection, campaign, treated, cap=rules.cap, now_us=now_us)
    # Orders may already fall in a new assignment's window (an entry time before now).
    await add_assignments(connection, campaign.campaign_id, new)
    return len(new)


async def _touch(connection: AsyncConnection, campaign: CampaignRecord, treated: Sequence[tuple[str, str]], *,
                 cap: FrequencyCap, now_us: int) -> None:
    """One touch per treated person (suppressed over the frequency cap), each pending one with its coupon."""
    dialect = connection.dialect.name
    now = from_epoch_micros(now_us)
    recent = await _recent_touch_times(connection, [person for person, _ in treated],
                                       now_us - cap.per_days * 86_400_000_000)
    offer = coupon_offer(campaign.offer)
    expiry = None if offer is None else expires_at(now, offer)
    expires_us = None if expiry is None else (now_us + (expiry - now) // _MICROSECOND)
    touch_rows, coupon_rows, published = [], [], []
    for person, arm in treated:
        previous = [from_epoch_micros(us) for us in recent.get(person, ())]
        status = SUPPRESSED if suppressed(previous, now, cap) else PENDING
        tid = touch_id(campaign.campaign_id, person)
        code = None
        if status == PENDING and offer is not None:
            code = new_code()
            coupon_rows.append((code, campaign.campaign_id, person, tid, expires_us, offer.per_person_limit))
        touch_rows.append((tid, campaign.campaign_id, person, arm, code, status, now_us, 0,
                           now_us if status == PENDING else None))
        published.append({"touch_id": tid, "campaign_id": campaign.campaign_id, "variant": arm, "person_key": person,
                          "coupon_code": code, "status": status, "created_at": format_timestamp(now),
                          "delivered_at": None})
    for start in range(0, len(touch_rows), _BULK):
        await connection.execute(_TOUCH_ROWS.insert(dialect), _TOUCH_ROWS.params(dialect, touch_rows[start:start + _BULK]))
    for start in range(0, len(coupon_rows), _BULK):
        await connection.execute(_COUPON_ROWS.insert(dialect),
                                 _COUPON_ROWS.params(dialect, coupon_rows[start:start + _BULK]))
    await queue_touch_records(connection, published)


_MICROSECOND = from_epoch_micros(1) - from_epoch_micros(0)
