"""The RFM population's quintile cuts, kept per (as_of, fact version) so that a profile, which ranks one
person against every customer, does not recount a million customers per request.

Exact: an entry is the cuts at exactly that as_of over the counted orders of exactly that version
(adapters/versions.py); a request at another moment, or after the consumer or an erasure changed counted
orders, computes anew (population.population_cuts) and keeps the result, the oldest entry making room.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncConnection

from services.segmentation.adapters.versions import fact_version
from services.segmentation.domain.customers import FiguresAt
from services.segmentation.domain.rfm import RfmCuts
from services.segmentation.population import population_cuts

# A few dashboards' moments at once; an entry is a handful of integers.
CACHED_MOMENTS = 64


class RfmCutsCache:
    """Bounded, least recently used first out; one computation at a time, so concurrent requests at one moment
    share it."""

    def __init__(self, entries: int = CACHED_MOMENTS) -> None:
        self.entries = entries
        self.computed = 0  # cuts computed from the database, not found here
        self._cuts: OrderedDict[tuple[int, int, tuple[int, int]], RfmCuts] = OrderedDict()
        self._computing = asyncio.Lock()

    async def cuts(self, connection: AsyncConnection, figures_at: FiguresAt) -> RfmCuts:
        """The whole RFM population's cuts at as_of (monetary in cents), as ``population_cuts`` computes them."""
        # The version first: cuts computed after reading it are at least that new, never older.
        key = (figures_at.as_of_us, figures_at.lookback_start_us, await fact_version(connection))
        found = self._found(key)
        if found is not None:
            return found
        async with self._computing:
            found = self._found(key)
            if found is not None:
                return found
            cuts = await population_cuts(connection, figures_at, monetary=True)
            self.computed += 1
            self._cuts[key] = cuts
            while len(self._cuts) > self.entries:
                self._cuts.popitem(last=False)
            return cuts

    def _found(self, key: tuple[int, int, tuple[int, int]]) -> RfmCuts | None:
        cuts = self._cuts.get(key)
        if cuts is not None:
            self._cuts.move_to_end(key)
        return cuts
