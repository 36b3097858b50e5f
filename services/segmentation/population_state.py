"""The whole customer population as counts at an as_of, kept in memory and moved, not counted per request.

A profile ranks one person against the RFM population, /v1/rfm counts it per (recency, frequency), /v1/lifecycle
and /v1/tiers count every known customer per (stage, tier) (SPEC.md "Customers"). ``PopulationCounts`` holds
what they need at one moment and one state of the facts: customers per (recency_days, frequency), every
monetary value in order, customers per (stage, tier). The database counts it once (``count_population``); after
that it is moved, exactly:
- to newer facts, through the log of changed facts (tables.fact_changes, written by triggers whatever changes
  the facts: the consumer, late and out-of-order events, an erasure): each changed person's standing under the
  facts before the change (the log says what was there) is taken out and the standing now put in;
- to another as_of, through the persons whose standing can differ between the two moments: those with a counted
  order in a few narrow time ranges (``moved_ranges``, ``stage_moved_ranges``) or first seen in between.
A person's standing is ``FiguresAt.standing`` (domain/customers.py), the same definition the database's counts
compile (tests hold them equal). Steady orders therefore cost a read of a few log rows and a few persons per
request, not a pass over a million customers.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as MetricCounter
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database
from libs.common.events import from_epoch_micros
from services.segmentation.adapters.fact_changes import (
    ChangeCursor,
    FactChange,
    LogSnapshot,
    changes_since,
    facts_before,
    log_snapshot,
    person_facts,
)
from services.segmentation.adapters.facts import rfm_cut_inputs
from services.segmentation.adapters.rfm_population import persons_moved, rfm_population
from services.segmentation.adapters.segments import stage_and_tier_counts
from services.segmentation.domain.customers import FiguresAt, LifecycleStage, MembershipTier, Standing
from services.segmentation.domain.rfm import RfmCounts, RfmCuts, cuts_of_counts, quintile_ranks, rfm_counts
from services.segmentation.domain.rounds import LOOKBACK_US, merged, moved_ranges, stage_moved_ranges
from services.segmentation.population import Thresholds

# Beyond this distance in time, or this many persons to move, counting again costs less than moving.
MAX_MOVE_US = 3_600_000_000
MAX_MOVERS = 50_000
PREFER_LATEST_WITHIN_US = 300_000_000  # five minutes: a time move that far costs a few thousand persons at most
KEPT_STATES = 4  # the latest few, so that requests at a few as_ofs (now, and an explicit one) each move little

StageTier = tuple[LifecycleStage, MembershipTier | None]


@dataclass(frozen=True)
class PopulationCounts:
    """The population at ``as_of_us`` under the facts a ``cursor`` of the change log stands for."""

    as_of_us: int
    cursor: ChangeCursor
    rfm_pairs: Counter[tuple[int, int]]  # (recency_days, frequency) -> customers of the RFM population
    monetary: Any  # their monetary values (cents), ascending: a numpy int64 array (a list past 64 bits)
    standings: Counter[StageTier]  # (lifecycle stage, tier or None) -> customers known at as_of

    def cuts(self) -> RfmCuts:
        """The RFM population's quintile cuts, monetary in cents."""
        recency: Counter[int] = Counter()
        frequency: Counter[int] = Counter()
        for (days, orders), customers in self.rfm_pairs.items():
            recency[days] += customers
            frequency[orders] += customers
        monetary = tuple(int(self.monetary[rank - 1]) for rank in quintile_ranks(len(self.monetary)))
        return cuts_of_counts(recency, frequency, monetary)

    def rfm_counts(self) -> RfmCounts:
        return rfm_counts((days, orders, customers) for (days, orders), customers in self.rfm_pairs.items())


def _sorted_values(values: Iterable[int]) -> Any:
    listed = list(values)
    try:
        return np.sort(np.array(listed, dtype=np.int64))
    except OverflowError:  # a person's monetary past 64 bits: Python integers
        return sorted(listed)


def moved_monetary(monetary: Any, removed: Sequence[int], added: Sequence[int]) -> Any:
    """The sorted values ``monetary`` without ``removed`` (each present) and with ``added``, still sorted."""
    if not removed and not added:
        return monetary
    if isinstance(monetary, np.ndarray):
        try:
            gone = np.sort(np.array(removed, dtype=np.int64))
            new = np.sort(np.array(added, dtype=np.int64))
        except OverflowError:
            monetary = monetary.tolist()
        else:
            if len(gone):
                positions = np.searchsorted(monetary, gone, side="left")
                # Equal values removed more than once: the next copies along.
                first = np.r_[True, gone[1:] != gone[:-1]]
                starts = np.maximum.accumulate(np.where(first, np.arange(len(gone)), 0))
                monetary = np.delete(monetary, positions + np.arange(len(gone)) - starts)
            if len(new):
                monetary = np.insert(monetary, np.searchsorted(monetary, new, side="left"), new)
            return monetary
    values = Counter(monetary)
    values.subtract(removed)
    values.update(added)
    return sorted(values.elements())


async def count_population(connection: AsyncConnection, figures_at: FiguresAt, cursor: ChangeCursor,
                           ) -> PopulationCounts:
    """The population at as_of counted by the database (three passes over the counted orders)."""
    histogram, _ = await rfm_cut_inputs(connection, figures_at.as_of_us, figures_at.lookback_start_us,
                                        monetary=False)
    _, _, monetary = await rfm_population(connection, figures_at.as_of_us, figures_at.lookback_start_us)
    standings = await stage_and_tier_counts(connection, figures_at)
    return PopulationCounts(
        as_of_us=figures_at.as_of_us, cursor=cursor,
        rfm_pairs=Counter({(days, orders): customers for days, orders, customers in histogram}),
        monetary=monetary if isinstance(monetary, list) else np.frombuffer(monetary, dtype=np.int64).copy(),
        standings=Counter(standings),
    )


def moved_population(base: PopulationCounts, at: FiguresAt, cursor: ChangeCursor,
                     before: Iterable[Standing], after: Iterable[Standing]) -> PopulationCounts:
    """``base`` with some persons' standings taken out (``before``, as counted in it) and put back (``after``)."""
    pairs = Counter(base.rfm_pairs)
    standings = Counter(base.standings)
    removed: list[int] = []
    added: list[int] = []
    for standing in before:
        if standing.stage_and_tier is not None:
            standings[standing.stage_and_tier] -= 1
        if standing.rfm is not None:
            days, orders, cents = standing.rfm
            pairs[days, orders] -= 1
            removed.append(cents)
    for standing in after:
        if standing.stage_and_tier is not None:
            standings[standing.stage_and_tier] += 1
        if standing.rfm is not None:
            days, orders, cents = standing.rfm
            pairs[days, orders] += 1
            added.append(cents)
    return PopulationCounts(as_of_us=at.as_of_us, cursor=cursor, rfm_pairs=+pairs,
                            monetary=moved_monetary(base.monetary, removed, added), standings=+standings)


def time_moved_ranges(one_us: int, other_us: int, thresholds: Thresholds) -> list[tuple[int, int]]:
    """Ranges ``(after, until]`` of counted order times holding an order of everyone whose standing differs between
    the two moments (facts alike), persons first seen in between aside."""
    low, high = min(one_us, other_us), max(one_us, other_us)
    if low == high:
        return []
    return merged([*moved_ranges(low, high, LOOKBACK_US),
                   *stage_moved_ranges(low, high, LOOKBACK_US, thresholds.lifecycle)])


class PopulationStates:
    """The latest few ``PopulationCounts``; one computation at a time (concurrent requests share it)."""

    def __init__(self, database: Database, thresholds: Thresholds, registry: CollectorRegistry) -> None:
        self.database = database
        self.thresholds = thresholds
        self._states: list[PopulationCounts] = []
        self._computing = asyncio.Lock()
        self._counted = MetricCounter("shoploop_rfm_population_counted_total",
                                      "Passes over every customer for the population counts (the others are "
                                      "moved from kept counts)", registry=registry)

    async def at(self, as_of: datetime) -> PopulationCounts:
        """The population at as_of under the facts as they are now, exact."""
        figures_at = self.thresholds.at(as_of)
        async with self._computing, self.database.read(snapshot=True) as connection:
            snapshot = await log_snapshot(connection)
            usable = [state for state in self._states if state.cursor.low >= snapshot.pruned
                      and abs(state.as_of_us - figures_at.as_of_us) <= MAX_MOVE_US]
            state = None
            if usable:
                # The latest state has followed the log furthest (an older one would take every change since): it
                # is the base unless another is much nearer in time.
                near = [kept for kept in usable if abs(kept.as_of_us - figures_at.as_of_us) <= PREFER_LATEST_WITHIN_US]
                base = near[0] if near else min(usable, key=lambda kept: abs(kept.as_of_us - figures_at.as_of_us))
                state = await self._moved(connection, base, figures_at, snapshot)
            if state is None:
                _, cursor = await changes_since(connection, None, snapshot)
                state = await count_population(connection, figures_at, cursor)
                self._counted.inc()
        self._states = [state, *(kept for kept in self._states if kept.as_of_us != state.as_of_us)][:KEPT_STATES]
        return state

    async def _moved(self, connection: AsyncConnection, base: PopulationCounts, figures_at: FiguresAt,
                     snapshot: LogSnapshot) -> PopulationCounts | None:
        changes, cursor = await changes_since(connection, base.cursor, snapshot)
        if not changes and base.as_of_us == figures_at.as_of_us:
            return base
        changed: dict[str, list[FactChange]] = {}
        for change in changes:
            changed.setdefault(change.person_key, []).append(change)
        movers = set(changed)
        if base.as_of_us != figures_at.as_of_us:
            low, high = sorted((base.as_of_us, figures_at.as_of_us))
            movers.update(await persons_moved(
                connection, time_moved_ranges(low, high, self.thresholds), low, high))
        if len(movers) > MAX_MOVERS:
            return None
        facts = await person_facts(connection, movers)
        base_at = self.thresholds.at(from_epoch_micros(base.as_of_us))
        before, after = [], []
        for person in movers:
            first_seen_us, orders = facts[person]
            after.append(figures_at.standing(first_seen_us, orders))
            if person in changed:
                first_seen_us, orders = facts_before(changed[person], first_seen_us, orders)
            before.append(base_at.standing(first_seen_us, orders))
        return moved_population(base, figures_at, cursor, before, after)
