"""The RFM population as counts and sorted values (what rfm_cuts.py keeps per moment), and the persons whose
RFM figures can differ between two close moments."""

from __future__ import annotations

import functools
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, Table, and_, bindparam, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows
from services.segmentation.adapters.facts import _rfm_figures, cents_total
from services.segmentation.adapters.tables import counted_orders, profiles
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
def _persons_moved(dialect: str) -> Any:
    ranges = _RANGES.select(dialect).subquery("ranges")
    after, until = ranges.c[0], ranges.c[1]
    order = counted_orders.c
    with_orders = (select(order.person_key)
                   .select_from(ranges.join(counted_orders, and_(order.occurred_us > after, order.occurred_us <= until))))
    first_seen = profiles.c.first_seen_us
    newly_known = select(profiles.c.person_key).where(first_seen > bindparam("seen_after", type_=BigInteger),
                                                      first_seen <= bindparam("seen_until", type_=BigInteger))
    return union(with_orders, newly_known)


async def persons_moved(connection: AsyncConnection, ranges: Sequence[tuple[int, int]], seen_after_us: int,
                        seen_until_us: int) -> list[str]:
    """Persons with a counted order in one of the ranges ``(after, until]`` (by the index on order time), and
    persons first seen in ``(seen_after, seen_until]``, in one statement compiled once."""
    dialect = connection.dialect.name
    params = _RANGES.params(dialect, ranges or [(0, 0)]) | {"seen_after": seen_after_us, "seen_until": seen_until_us}
    return list((await connection.execute(_persons_moved(dialect), params)).scalars())
