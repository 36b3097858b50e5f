"""The RFM population's quintile cuts at any as_of without a pass over every customer per request.

A profile ranks one person against every customer of the RFM population (SPEC.md "Customers"). The population
is counted once per moment on a grid (``BASE_STEP_US``) and fact version (adapters/versions.py): customers per
recency_days, per frequency, and the sorted monetary values. The cuts at an as_of between two grid moments
are then derived exactly: between the grid moment below and as_of, only persons with a counted order in one of
a few narrow time ranges can have other RFM figures (``moved_ranges``); their figures at both moments are read
by index, taken out of the counts and put back as they are at as_of (``moved_cuts``). Cuts are kept per exact
(as_of, version) too. A change of counted orders (the consumer, an erasure) changes the version, and the next
request counts the population anew.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as MetricCounter
from sqlalchemy.ext.asyncio import AsyncConnection

from services.segmentation.adapters.rfm_population import (
    persons_with_orders_in,
    rfm_figures_of,
    rfm_population,
)
from services.segmentation.adapters.versions import fact_version
from services.segmentation.domain.customers import FiguresAt
from services.segmentation.domain.rfm import RfmCuts, cuts_of_counts, quintile_ranks
from services.segmentation.domain.rounds import DAY_US

BASE_STEP_US = 60_000_000  # the grid the population is counted on: a minute
CACHED_MOMENTS = 64  # exact (as_of, version) cuts kept: a handful of integers each
CACHED_POPULATIONS = 2  # counted populations kept: 8 bytes per customer each


@dataclass(frozen=True)
class PopulationCounts:
    """The RFM population at a moment as counts: enough to take its cuts, and to move it a little."""

    recency: Counter[int]  # recency_days -> customers
    frequency: Counter[int]  # frequency -> customers
    monetary: Sequence[int]  # every customer's monetary (cents), ascending


def moved_ranges(base_us: int, as_of_us: int, lookback_us: int) -> list[tuple[int, int]]:
    """The ranges ``(after, until]`` holding a counted order of every person whose RFM figures at as_of can
    differ from those at base (base <= as_of): an order between the two moments (enters), one leaving the
    lookback between them, and a last order that turns one day older: recency_days = (t - last) // day differs
    at base and as_of exactly when base - k days < last <= as_of - k days for some k >= 1."""
    if as_of_us <= base_us:
        return []
    ranges = [(base_us, as_of_us), (base_us - lookback_us, as_of_us - lookback_us)]
    ranges += [(base_us - k * DAY_US, as_of_us - k * DAY_US) for k in range(1, lookback_us // DAY_US + 2)]
    return ranges


def _kth_smallest(base: Sequence[int], removed: Sequence[int], added: Sequence[int], rank: int) -> int:
    """The rank-th smallest (1-based) of the multiset base - removed + added (all sorted; removed within base)."""
    def at_most(value: int) -> int:
        return bisect_right(base, value) - bisect_right(removed, value) + bisect_right(added, value)

    found = []
    for values in (base, added):
        low, high = 0, len(values)
        while low < high:  # the smallest value with at least ``rank`` values at or below it
            middle = (low + high) // 2
            if at_most(values[middle]) >= rank:
                high = middle
            else:
                low = middle + 1
        if low < len(values):
            found.append(values[low])
    # A base value whose every copy was removed is never the smallest found: an added value below it is.
    return min(found)


def moved_cuts(base: PopulationCounts, before: Iterable[tuple[int, int, int]],
               after: Iterable[tuple[int, int, int]]) -> RfmCuts:
    """The cuts of ``base`` with some customers' ``(recency_days, frequency, monetary)`` taken out (``before``,
    all of them in ``base``) and some put in (``after``): equal to ``rfm_cuts`` of the population so changed."""
    recency, frequency = Counter(base.recency), Counter(base.frequency)
    removed, added = [], []
    for days, orders, cents in before:
        recency[days] -= 1
        frequency[orders] -= 1
        removed.append(cents)
    for days, orders, cents in after:
        recency[days] += 1
        frequency[orders] += 1
        added.append(cents)
    removed.sort()
    added.sort()
    size = len(base.monetary) - len(removed) + len(added)
    monetary = tuple(_kth_smallest(base.monetary, removed, added, rank) for rank in quintile_ranks(size))
    return cuts_of_counts(+recency, +frequency, monetary)


class RfmCutsCache:
    """Counted populations and cuts, bounded, least recently used first out; one computation at a time, so
    concurrent requests share it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._cuts: OrderedDict[tuple[int, int, tuple[int, int]], RfmCuts] = OrderedDict()
        self._populations: OrderedDict[tuple[int, int, tuple[int, int]], PopulationCounts] = OrderedDict()
        self._computing = asyncio.Lock()
        self._counted = MetricCounter("shoploop_rfm_population_counted_total",
                                      "Passes over the RFM population for its quintile cuts (per grid moment "
                                      "and fact version)", registry=registry)

    async def cuts(self, connection: AsyncConnection, figures_at: FiguresAt) -> RfmCuts:
        """The whole RFM population's cuts at as_of (monetary in cents), exact."""
        as_of_us = figures_at.as_of_us
        lookback_us = as_of_us - figures_at.lookback_start_us
        # The version first: whatever is read after it is at least that new, so nothing older is kept newer.
        version = (await fact_version(connection)).of_orders
        key = (as_of_us, lookback_us, version)
        found = _recent(self._cuts, key)
        if found is not None:
            return found
        async with self._computing:
            found = _recent(self._cuts, key)
            if found is not None:
                return found
            base_us = as_of_us - as_of_us % BASE_STEP_US
            population_key = (base_us, lookback_us, version)
            population = _recent(self._populations, population_key)
            if population is None:
                population = PopulationCounts(*await rfm_population(connection, base_us, base_us - lookback_us))
                self._counted.inc()
                _keep(self._populations, population_key, population, CACHED_POPULATIONS)
            before: list[tuple[int, int, int]] = []
            after: list[tuple[int, int, int]] = []
            movers = await persons_with_orders_in(connection, moved_ranges(base_us, as_of_us, lookback_us))
            if movers:
                before = await rfm_figures_of(connection, base_us, base_us - lookback_us, movers)
                after = await rfm_figures_of(connection, as_of_us, as_of_us - lookback_us, movers)
            cuts = moved_cuts(population, before, after)
            _keep(self._cuts, key, cuts, CACHED_MOMENTS)
            return cuts


def _recent(entries: OrderedDict[Any, Any], key: Any) -> Any:
    found = entries.get(key)
    if found is not None:
        entries.move_to_end(key)
    return found


def _keep(entries: OrderedDict[Any, Any], key: Any, value: Any, bound: int) -> None:
    entries[key] = value
    while len(entries) > bound:
        entries.popitem(last=False)
