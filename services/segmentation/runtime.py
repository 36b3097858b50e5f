"""The segmentation service process: the common ``Service`` plus its clock, thresholds and membership scheduler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from libs.common.db import Database
from libs.common.kafka import EVENTS_TOPIC, Subscription
from libs.common.service import Service
from services.segmentation.membership import MembershipScheduler
from services.segmentation.population import Thresholds
from services.segmentation.population_state import PopulationStates
from services.segmentation.settings import SegmentationSettings


def system_clock() -> datetime:
    return datetime.now(UTC)


class SegmentationService(Service):
    """Starts the membership scheduler once the broker is connected; stops it before the database closes."""

    settings: SegmentationSettings

    def __init__(self, settings: SegmentationSettings, database: Database, subscriptions: Sequence[Subscription] = (),
                 *, clock: Callable[[], datetime] = system_clock) -> None:
        super().__init__("segmentation", settings, database, subscriptions)
        self.clock = clock
        self.thresholds = Thresholds(settings.lifecycle.thresholds(), settings.tiers.thresholds())
        self.population = PopulationStates(database, self.thresholds, self.metrics.registry)
        self.scheduler = MembershipScheduler(
            database, self.publisher, thresholds=self.thresholds, settings=settings.membership, clock=clock,
            metrics=self.metrics, events_lag=self._events_lag,
        )

    def _events_lag(self) -> int:
        """Records of shoploop.events.v1 not yet applied (as of the runtime's last check, once a second)."""
        return sum(runtime.status.lag or 0 for runtime in self.consumers if EVENTS_TOPIC in runtime.subscription.topics)

    async def start(self) -> None:
        await super().start()
        self.scheduler.start(self.wait_connected)

    async def stop(self) -> None:
        await self.scheduler.stop()
        await super().stop()
