"""The campaigns service process: the common ``Service`` plus its clock, the deliverer of webhooks (one shared HTTP
session) and the scheduler of due work."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from libs.common.db import Database
from libs.common.kafka import Subscription
from libs.common.service import Service
from services.campaigns.delivery import Deliverer
from services.campaigns.domain.frequency import FrequencyCap
from services.campaigns.enrolment import EnrolmentRules
from services.campaigns.scheduler import CampaignScheduler
from services.campaigns.settings import CampaignsSettings


def system_clock() -> datetime:
    return datetime.now(UTC)


def offset_clock(seconds: float) -> Callable[[], datetime]:
    """The system clock moved by ``seconds`` (the ``clock_offset_seconds`` setting)."""
    if not seconds:
        return system_clock
    offset = timedelta(seconds=seconds)
    return lambda: datetime.now(UTC) + offset


class CampaignsService(Service):
    """Starts the scheduler once the broker is connected; stops it, then the HTTP session, before the database."""

    settings: CampaignsSettings

    def __init__(self, settings: CampaignsSettings, database: Database, subscriptions: Sequence[Subscription] = (),
                 *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__("campaigns", settings, database, subscriptions)
        self.clock = clock or offset_clock(settings.clock_offset_seconds)
        cap = settings.frequency_cap
        self.rules = EnrolmentRules(global_holdout_bp=settings.global_holdout_bp,
                                    cap=FrequencyCap(cap.max_touches, cap.per_days))
        self.deliverer = Deliverer(database, settings.webhooks, clock=self.clock,
                                   local_mode=settings.common.env in ("local", "test"),
                                   owner=uuid.uuid4().hex)
        self.scheduler = CampaignScheduler(database, self.publisher, self.deliverer, rules=self.rules,
                                           settings=settings.scheduler, clock=self.clock)

    async def start(self) -> None:
        await super().start()
        self.scheduler.start(self.wait_connected)

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.deliverer.aclose()
        await super().stop()
