"""The campaigns scheduler: every due piece of work lives in the database, so it survives restarts and is shared by
replicas. Each pass: complete campaigns past end_at, send segment_scheduled campaigns whose send_at has come,
decide cart_abandoned / inquiry_unanswered deadlines, deliver due touches (retries included), pause campaigns
that reached their budget, and publish queued touch records on shoploop.campaigns.v1.

Claims: PostgreSQL ``FOR UPDATE SKIP LOCKED`` (or a row lock on the campaign); SQLite's writers take the database
lock at BEGIN IMMEDIATE. Two replicas therefore never decide, assign or send the same thing twice.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy import delete, or_, select, update

from libs.common.background import BackgroundLoop, Clock
from libs.common.db import Database
from libs.common.events import epoch_micros, from_epoch_micros
from libs.common.kafka import CAMPAIGNS_TOPIC, Publisher
from services.campaigns.adapters.campaigns import campaigns_with, load_campaign, save_campaign
from services.campaigns.adapters.orders import completed_order_times
from services.campaigns.adapters.report_state import lock_report
from services.campaigns.adapters.tables import campaigns, pending_triggers, segment_members, touch_outbox
from services.campaigns.delivery import Deliverer, spent_cents
from services.campaigns.domain.audiences import abandoned
from services.campaigns.domain.budget import budget_reached
from services.campaigns.enrolment import EnrolmentRules, enrol
from services.campaigns.settings import SchedulerSettings

log = logging.getLogger(__name__)


class CampaignScheduler(BackgroundLoop):
    def __init__(self, database: Database, publisher: Publisher, deliverer: Deliverer, *, rules: EnrolmentRules,
                 settings: SchedulerSettings, clock: Clock) -> None:
        super().__init__("campaigns-scheduler", database=database, publisher=publisher, clock=clock)
        self.deliverer = deliverer
        self.rules = rules
        self.settings = settings
        self.passes = 0

    async def _loop(self) -> None:
        # Woken early by new touches from the consumer, an activation, a call.
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                busy = await self.run_once()
                self._succeeded()
            except Exception:
                log.exception("campaign scheduler pass failed; retrying")
                await self._wait_after_failure()
                continue
            if not busy:
                await self._sleep(self.settings.poll_seconds)

    async def run_once(self) -> bool:
        """One pass; True when a batch was full (more work is probably due at once)."""
        await self.complete_ended()
        await self.send_scheduled()
        decided = await self.decide_deadlines()
        claimed = await self.deliverer.deliver_due(self.settings.batch)
        await self.pause_over_budget()
        published = await self.publish_touches()
        self.passes += 1
        batch = self.settings.batch
        return decided >= batch or claimed >= batch or published >= batch

    async def complete_ended(self) -> None:
        now_us = epoch_micros(self.clock())
        c = campaigns.c
        async with self.database.begin() as connection:
            await connection.execute(update(campaigns)
                                     .where(c.status.in_(("active", "paused")), c.end_us.is_not(None),
                                            c.end_us <= now_us)
                                     .values(status="completed", completed_us=c.end_us))

    async def send_scheduled(self) -> None:
        """segment_scheduled: every member of the segment (this service's mirror) at send_at, once."""
        now_us = epoch_micros(self.clock())
        c = campaigns.c
        due = (select(c.campaign_id)
               .where(c.status == "active", c.audience_kind == "segment_scheduled", c.scheduled_sent.is_(False),
                      c.send_us <= now_us)
               .limit(1).with_for_update(skip_locked=True))
        while True:
            async with self.database.begin() as connection:
                await lock_report(connection)  # enrolment takes it: first, before the campaign's row lock
                campaign_id = (await connection.execute(due)).scalar()
                if campaign_id is None:
                    return
                campaign = await load_campaign(connection, campaign_id)
                assert campaign is not None and campaign.send_us is not None
                if campaign.assigns_at(campaign.send_us):
                    # The members at send_at, whenever this pass runs (entered by then, not left by then).
                    m = segment_members.c
                    members = select(m.person_key).where(
                        m.segment_id == campaign.segment_id, m.entered_us <= campaign.send_us,
                        or_(m.exited_us.is_(None), m.exited_us > campaign.send_us))
                    persons = list((await connection.execute(members)).scalars())
                    assigned = await enrol(connection, campaign, [(p, campaign.send_us) for p in persons],
                                           rules=self.rules, now_us=now_us)
                    log.info("scheduled campaign sent", extra={"campaign_id": campaign_id, "assigned": assigned})
                await connection.execute(update(campaigns).where(c.campaign_id == campaign_id)
                                         .values(scheduled_sent=True))

    async def decide_deadlines(self) -> int:
        """cart_abandoned / inquiry_unanswered: at each trigger's deadline t + H, enter the person when no completed
        order of theirs fell in [t, t + H] (as far as the service has seen)."""
        now_us = epoch_micros(self.clock())
        p = pending_triggers.c
        query = (select(pending_triggers).where(p.deadline_us <= now_us)
                 .order_by(p.deadline_us, p.event_id).limit(self.settings.batch)
                 .with_for_update(skip_locked=True))
        async with self.database.begin() as connection:
            await lock_report(connection)  # enrolment takes it: first, before the triggers' row locks
            rows = list((await connection.execute(query)).all())
            if not rows:
                return 0
            by_campaign: dict[str, list[tuple[str, int]]] = {}
            for row in rows:
                campaign = await load_campaign(connection, row.campaign_id)
                if campaign is None or not campaign.assigns_at(row.deadline_us) or campaign.hours is None:
                    continue
                orders = await completed_order_times(connection, row.person_key, row.occurred_us, row.deadline_us)
                if abandoned(from_epoch_micros(row.occurred_us), campaign.hours, map(from_epoch_micros, orders)):
                    by_campaign.setdefault(row.campaign_id, []).append((row.person_key, row.deadline_us))
            for campaign_id, entrants in by_campaign.items():
                campaign = await load_campaign(connection, campaign_id)
                assert campaign is not None
                await enrol(connection, campaign, entrants, rules=self.rules, now_us=now_us)
            for row in rows:
                await connection.execute(delete(pending_triggers).where(p.campaign_id == row.campaign_id,
                                                                        p.event_id == row.event_id))
        return len(rows)

    async def pause_over_budget(self) -> None:
        """A campaign whose delivered touches x per-touch cost + discount cost reached its budget is paused."""
        async with self.database.begin() as connection:
            for campaign in await campaigns_with(connection, statuses=("active",)):
                if campaign.budget_cents is None:
                    continue
                spent_so_far = await spent_cents(connection, campaign)
                if budget_reached(spent_so_far, campaign.budget_cents):
                    locked = await load_campaign(connection, campaign.campaign_id, lock=True)
                    if locked is not None and locked.status == "active":
                        await save_campaign(connection, replace(locked, status="paused", paused_reason="budget"))
                        log.info("campaign paused: budget reached", extra={"campaign_id": campaign.campaign_id})

    async def publish_touches(self) -> int:
        """Publish queued touch records in order, deleting each batch once the broker acknowledged it."""
        published = 0
        o = touch_outbox.c
        query = select(o.seq, o.person_key, o.payload).order_by(o.seq).limit(self.settings.batch) \
            .with_for_update(skip_locked=True)
        while True:
            async with self.database.begin() as connection:
                rows = list((await connection.execute(query)).all())
                if not rows:
                    return published
                await self.publisher.publish_many(CAMPAIGNS_TOPIC, [(row.person_key.encode(), row.payload.encode())
                                                                    for row in rows])
                seqs = [row.seq for row in rows]
                for start in range(0, len(seqs), 900):
                    await connection.execute(delete(touch_outbox).where(o.seq.in_(seqs[start:start + 900])))
            published += len(rows)

