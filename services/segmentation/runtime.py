"""The segmentation service process: the common ``Service`` plus its clock, thresholds and membership scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from libs.common.db import Database
from libs.common.kafka import EVENTS_TOPIC, Subscription
from libs.common.service import Service
from services.segmentation.membership import MembershipScheduler
from services.segmentation.population import Thresholds
from services.segmentation.population_state import PopulationStates
from services.segmentation.settings import SegmentationSettings

log = logging.getLogger(__name__)
KEEP_POPULATION_SECONDS = 60.0  # well within membership.FACT_CHANGES_KEPT


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
        self._counting: asyncio.Task[None] | None = None
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
        # The population counts are made once now, not by the first request; requests then move them.
        self._counting = asyncio.create_task(self._keep_population(), name="segmentation-population")

    async def _keep_population(self) -> None:
        """Count the population at start-up, then move it to now every minute: without requests for longer than
        the change log keeps its rows, the next request would have to count it again."""
        while True:
            try:
                await self.population.at(self.clock())
            except Exception:
                log.exception("keeping the customer population counts failed; the next request counts them")
            await asyncio.sleep(KEEP_POPULATION_SECONDS)

    async def stop(self) -> None:
        if self._counting is not None:
            self._counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counting
        await self.scheduler.stop()
        await super().stop()
