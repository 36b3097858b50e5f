"""The RFM population as counts and sorted values (what rfm_cuts.py keeps per moment), and the persons whose
RFM figures can differ between two close moments."""

from __future__ import annotations

import functools
from array import array
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, Select, Table, and_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows, chunks
from services.segmentation.adapters.facts import _rfm_figures, cents_total
from services.segmentation.adapters.tables import counted_orders
from services.segmentation.domain.rounds import DAY_US

_STREAMED_ROWS = 50_000


async def rfm_population(connection: AsyncConnection, as_of_us: int,
                         lookback_start_us: int) -> tuple[Counter[int], Counter[int], Sequence[int]]:
    """The RFM population at as_of in one pass: customers per recency_days, per frequency, and every monetary
    value (cents) in ascending order (packed 8 bytes each while they fit)."""
    figures = _rfm_figures(as_of_us, lookback_start_us).subquery("figures")
    high, low = figures.c.monetary_high, figures.c.monetary_low  # a wide sum (libs/common/db.py wide_sum)
    query = select(figures.c.last_order_us, figures.c.frequency, high, low).order_by(high, low)
    recency: Counter[int] = Counter()
    frequency: Counter[int] = Counter()
    monetary: array[int] | list[int] = array("q")
    result = await connection.stream(query)
    async for part in result.partitions(_STREAMED_ROWS):
        for last_order_us, orders, cents_high, cents_low in part:
            recency[(as_of_us - last_order_us) // DAY_US] += 1
            frequency[orders] += 1
            cents = cents_total(cents_high, cents_low) or 0
            try:
                monetary.append(cents)
            except OverflowError:  # a sum of cents beyond 64 bits: keep Python integers
                monetary = [*monetary, cents]
    return recency, frequency, monetary


# The ranges bound as one value (two arrays, or one JSON array): one statement, compiled and prepared once, for
# any number of ranges (hundreds: one per day of the lookback), each an index range scan of counted order times.
_RANGES = BulkRows(Table("ranges", MetaData(), Column("after_us", BigInteger), Column("until_us", BigInteger)),
                   ("after_us", "until_us"))


@functools.cache
def _persons_in_ranges(dialect: str) -> Select[Any]:
    ranges = _RANGES.select(dialect).subquery("ranges")
    after, until = ranges.c[0], ranges.c[1]
    order = counted_orders.c
    return (select(order.person_key).distinct()
            .select_from(ranges.join(counted_orders, and_(order.occurred_us > after, order.occurred_us <= until))))


async def persons_with_orders_in(connection: AsyncConnection, ranges: Sequence[tuple[int, int]]) -> list[str]:
    """Persons with a counted order in one of the ranges ``(after, until]`` (by the index on order time)."""
    if not ranges:
        return []
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # The planner expects millions of rows from a join on ranges (it finds a few): it would JIT-compile the
        # plan, about 60 ms, for a query that takes 2 ms.
        await connection.execute(text("SET LOCAL jit = off"))
    result = await connection.execute(_persons_in_ranges(dialect), _RANGES.params(dialect, ranges))
    return list(result.scalars())


async def rfm_figures_of(connection: AsyncConnection, as_of_us: int, lookback_start_us: int,
                         persons: Collection[str]) -> list[tuple[int, int, int]]:
    """``(recency_days, frequency, monetary_cents)`` at as_of of those of the persons in the RFM population."""
    figures: list[tuple[int, int, int]] = []
    query = _rfm_figures(as_of_us, lookback_start_us)
    for batch in chunks(persons):
        rows = await connection.execute(query.where(counted_orders.c.person_key.in_(batch)))
        figures.extend(((as_of_us - last_order_us) // DAY_US, orders, cents_total(high, low) or 0)
                       for _, last_order_us, orders, high, low in rows)
    return figures
