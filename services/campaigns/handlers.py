"""Consumer handlers of the campaigns service (one table in bootstrap.py): orders and triggers from
shoploop.events.v1, segment entries and exits from shoploop.segments.v1, erasure from shoploop.privacy.v1."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows, chunks
from libs.common.events import PublishedEvent, epoch_micros
from libs.common.privacy import ErasureRequest
from services.campaigns.adapters.campaigns import campaigns_with
from services.campaigns.adapters.orders import record_orders
from services.campaigns.adapters.report_state import lock_report
from services.campaigns.adapters.tables import (
    PERSONAL_TABLES,
    counted_orders,
    coupons,
    order_events,
    pending_triggers,
    segment_members,
    touch_outbox,
    touches,
)
from services.campaigns.delivery import fail_pending_of
from services.campaigns.domain.audiences import TRIGGER_TYPE, AudienceKind
from services.campaigns.enrolment import EnrolmentRules, enrol

Clock = Callable[[], datetime]
_HOUR_US = 3_600_000_000
_TRIGGER_ROWS = BulkRows(pending_triggers, ("campaign_id", "event_id", "person_key", "occurred_us", "deadline_us"))
_MEMBER_ROWS = BulkRows(segment_members, ("segment_id", "person_key", "entered_us", "exited_us"))


class SegmentChange(BaseModel):
    """A record of shoploop.segments.v1 (docs/segmentation.md "Segment changes")."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    change_id: str = Field(min_length=1, max_length=256)
    change: str
    segment_id: str = Field(min_length=1, max_length=256)
    person_key: str = Field(min_length=1, max_length=300)
    as_of: datetime

    @classmethod
    def from_json(cls, payload: bytes) -> SegmentChange:
        return cls.model_validate_json(payload)

    @property
    def occurred_at(self) -> datetime:
        return self.as_of


def record_events(rules: EnrolmentRules) -> Callable[[AsyncConnection, Sequence[PublishedEvent]], Awaitable[None]]:
    """Orders are stored for attribution, coupons and abandonment decisions; add_to_cart and inquiry events start
    the deadline of every active cart_abandoned / inquiry_unanswered campaign (decided by the scheduler)."""

    async def handle(connection: AsyncConnection, events: Sequence[PublishedEvent]) -> None:
        await lock_report(connection)
        await record_orders(connection, [event for event in events if event.type == "order" and event.order])
        triggers = [event for event in events if event.type in ("add_to_cart", "inquiry")]
        if not triggers:
            return
        deadline_campaigns = await campaigns_with(connection, statuses=("active",), kinds=[
            AudienceKind.CART_ABANDONED.value, AudienceKind.INQUIRY_UNANSWERED.value])
        rows = []
        for campaign in deadline_campaigns:
            trigger_type = TRIGGER_TYPE[AudienceKind(campaign.audience_kind)]
            assert campaign.hours is not None and campaign.activated_us is not None
            for event in triggers:
                occurred_us = epoch_micros(event.occurred_at)
                # Triggers from the activation instant on; the deadline falls while the campaign may assign.
                if event.type == trigger_type and occurred_us >= campaign.activated_us:
                    rows.append((campaign.campaign_id, event.event_id, event.person_key, occurred_us,
                                 occurred_us + campaign.hours * _HOUR_US))
        if rows:
            dialect = connection.dialect.name
            statement = _TRIGGER_ROWS.insert(dialect).on_conflict_do_nothing(index_elements=["campaign_id",
                                                                                          "event_id"])
            await connection.execute(statement, _TRIGGER_ROWS.params(dialect, rows))

    return handle


def follow_segments(rules: EnrolmentRules, clock: Clock,
                    ) -> Callable[[AsyncConnection, Sequence[SegmentChange]], Awaitable[None]]:
    """Keep this service's mirror of segment membership, exits included (for segment_scheduled), and enter persons
    into active
    segment_entered campaigns at the entry's time (entries from the activation instant on)."""

    async def handle(connection: AsyncConnection, changes: Sequence[SegmentChange]) -> None:
        await lock_report(connection)  # before any row lock: enrolment below takes it
        dialect = connection.dialect.name
        # In topic order per person (one partition per person key): per pair, the last entry of the batch and an
        # exit after it.
        spans: dict[tuple[str, str], list[int | None]] = {}
        for change in changes:
            span = spans.setdefault((change.segment_id, change.person_key), [None, None])
            if change.change == "entered":
                span[:] = [epoch_micros(change.as_of), None]
            else:
                span[1] = epoch_micros(change.as_of)
        rows = [(segment_id, person, entered_us, exited_us)
                for (segment_id, person), (entered_us, exited_us) in spans.items() if entered_us is not None]
        if rows:
            statement = _MEMBER_ROWS.insert(dialect)
            statement = statement.on_conflict_do_update(index_elements=["segment_id", "person_key"],
                                                        set_={"entered_us": statement.excluded.entered_us,
                                                              "exited_us": statement.excluded.exited_us})
            await connection.execute(statement, _MEMBER_ROWS.params(dialect, rows))
        m = segment_members.c
        for (segment_id, person), (entered_us, exited_us) in spans.items():
            if entered_us is None:
                await connection.execute(update(segment_members)
                                         .where(m.segment_id == segment_id, m.person_key == person)
                                         .values(exited_us=exited_us))
        entries = [c for c in changes if c.change == "entered"]
        if not entries:
            return
        followers = await campaigns_with(connection, statuses=("active",),
                                         kinds=[AudienceKind.SEGMENT_ENTERED.value])
        now_us = epoch_micros(clock())
        for campaign in followers:
            assert campaign.activated_us is not None
            entrants = []
            for change in entries:
                at_us = epoch_micros(change.as_of)
                if (change.segment_id == campaign.segment_id and at_us >= campaign.activated_us
                        and campaign.assigns_at(at_us)):
                    entrants.append((change.person_key, at_us))
            if entrants:
                await enrol(connection, campaign, entrants, rules=rules, now_us=now_us)

    return handle


def _erased_code(request: ErasureRequest, code: str) -> str:
    return "erased-" + hashlib.sha256(f"{request.request_id}:{code}".encode()).hexdigest()[:40]


async def erase_persons(connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
    """SPEC.md "Erasure": the person's key and coupon codes leave every table; rows that carry counts stay under a
    pseudonym (and pseudonymous codes), so every report figure is unchanged. Pending touches are never sent."""
    await lock_report(connection)  # a share being refreshed must not be renamed under it
    for request in requests:
        person, pseudonym = request.person_key, request.pseudonym
        await fail_pending_of(connection, [person])
        codes = list((await connection.execute(select(coupons.c.code).where(coupons.c.person_key == person)))
                     .scalars())
        for batch in chunks(codes):
            for code in batch:
                replacement = _erased_code(request, code)
                await connection.execute(update(coupons).where(coupons.c.code == code).values(code=replacement))
                await connection.execute(update(touches).where(touches.c.coupon_code == code)
                                         .values(coupon_code=replacement))
                for table in (order_events, counted_orders):
                    await connection.execute(update(table).where(table.c.person_key == person,
                                                                 table.c.coupon_code == code)
                                             .values(coupon_code=replacement))
        await connection.execute(delete(segment_members).where(segment_members.c.person_key == person))
        await connection.execute(delete(pending_triggers).where(pending_triggers.c.person_key == person))
        await connection.execute(delete(touch_outbox).where(touch_outbox.c.person_key == person))
        for table in PERSONAL_TABLES:
            if table not in (segment_members, pending_triggers, touch_outbox):
                await connection.execute(update(table).where(table.c.person_key == person)
                                         .values(person_key=pseudonym))
