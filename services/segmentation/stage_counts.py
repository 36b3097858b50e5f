"""Customers per (lifecycle stage, tier) at any as_of without a pass over every customer per request
(GET /v1/lifecycle, GET /v1/tiers).

As rfm_cuts.py does for the RFM population: the counts are made by the database once per grid minute and fact
version (``stage_and_tier_counts``), and moved exactly to an as_of within the minute through the persons whose
stage or tier can differ between the two moments (``stage_moved_ranges``, and persons first seen in between),
whose stage and tier at both moments are read by index.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import from_epoch_micros
from services.segmentation.adapters.rfm_population import persons_with_orders_in
from services.segmentation.adapters.segments import persons_first_seen_in, stage_and_tier_counts, stages_of
from services.segmentation.adapters.versions import fact_version
from services.segmentation.domain.customers import LifecycleStage, LifecycleThresholds, MembershipTier
from services.segmentation.population import Thresholds
from services.segmentation.rfm_cuts import BASE_STEP_US, CACHED_MOMENTS, _keep, _recent

StageCounts = dict[tuple[LifecycleStage, MembershipTier | None], int]
_MICROSECOND = timedelta(microseconds=1)


def stage_moved_ranges(base_us: int, as_of_us: int, lookback_us: int,
                       lifecycle: LifecycleThresholds) -> list[tuple[int, int]]:
    """The ranges ``(after, until]`` holding a counted order of every known person whose stage or tier at as_of
    can differ from base (base <= as_of; persons first seen in between aside): an order in between (orders,
    last order, gmv), one leaving the lookback (gmv), and a last order that passes one of the stage thresholds
    N days: "within N days" is as_of - t <= N days, which differs at base and as_of for base - N <= t < as_of - N."""
    if as_of_us <= base_us:
        return []
    ranges = [(base_us, as_of_us), (base_us - lookback_us, as_of_us - lookback_us)]
    for days in (lifecycle.new_days, lifecycle.active_days, lifecycle.dormant_days):
        threshold = timedelta(days=days) // _MICROSECOND
        ranges.append((base_us - threshold - 1, as_of_us - threshold))
    return ranges


class StageCountsCache:
    """Counts per grid minute and fact version, and per exact as_of; bounded, least recently used first out."""

    def __init__(self) -> None:
        self._counts: OrderedDict[tuple[int, int, int], StageCounts] = OrderedDict()
        self._computing = asyncio.Lock()

    async def counts(self, connection: AsyncConnection, as_of: datetime, thresholds: Thresholds) -> StageCounts:
        """How many persons known at as_of are in each (lifecycle stage, tier or None)."""
        figures_at = thresholds.at(as_of)
        as_of_us = figures_at.as_of_us
        version = await fact_version(connection)  # first: what is read after it is at least that new
        key = (as_of_us, version.writers, version.facts)
        found = _recent(self._counts, key)
        if found is not None:
            return found
        async with self._computing:
            found = _recent(self._counts, key)
            if found is not None:
                return found
            base_us = as_of_us - as_of_us % BASE_STEP_US
            base_key = (base_us, version.writers, version.facts)
            base_at = thresholds.at(from_epoch_micros(base_us))
            base = _recent(self._counts, base_key)
            if base is None:
                base = await stage_and_tier_counts(connection, base_at)
                _keep(self._counts, base_key, base, CACHED_MOMENTS)
            counts = base
            if as_of_us != base_us:
                lookback_us = as_of_us - figures_at.lookback_start_us
                movers = set(await persons_with_orders_in(
                    connection, stage_moved_ranges(base_us, as_of_us, lookback_us, thresholds.lifecycle)))
                movers.update(await persons_first_seen_in(connection, base_us, as_of_us))
                moved: Counter[tuple[LifecycleStage, MembershipTier | None]] = Counter(base)
                moved.subtract(await stages_of(connection, base_at, movers))
                moved.update(await stages_of(connection, figures_at, movers))
                counts = {standing: customers for standing, customers in moved.items() if customers > 0}
                _keep(self._counts, key, counts, CACHED_MOMENTS)
            return counts
