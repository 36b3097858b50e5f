"""SPEC.md "Product matrix" and "Product lifecycle" computed by DuckDB over the fact copy.

The compiled form of ``services.funnel.domain.products.product_matrix`` (the reference, held equal to this by
tests/unit/funnel/test_engine_matrix.py on random histories): the same ``MatrixEntry`` list. The SPEC's shares
and medians become integer comparisons, with the same thresholds exactly:

- share below of a price within its category >= 0.9: ``10 x (priced peers strictly cheaper) >= 9 x (priced
  peers)``, the product itself among them; a product without a price fails rules 1 and 2;
- units <= the category's median units (all its products): ``2 x units <= low middle + high middle``, the
  middles equal for an odd count; price <= the median price of its priced peers likewise;
- share above < 0.2 of uv or gmv (all compared products): ``5 x (products strictly greater) < products``,
  where ``rank() - 1`` over a descending order is the number strictly greater;
- lifecycle: ``introduction`` when the product has no event at or before as_of - 28 days; then L and P as
  integer units, with growth ``5 L > 6 P`` and decline ``5 L < 4 P`` (1.2 and 0.8, exactly).

Every ranking runs over the whole population (the products viewed in the 30 days), so a page is that answer
sliced by product_id after the cursor.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from libs.common.events import epoch_micros
from services.funnel.domain.products import LIFECYCLE_PERIOD, MATRIX_PERIOD, MatrixEntry
from services.funnel.engine import kpi_state, product_state
from services.funnel.engine.facts import decimal_of, micros, optional_decimal_of, placed_orders


def _query(recent: bool, folded: int | None) -> str:
    """The query; ``recent``: as_of is at or after product_state's horizon, so the state gives the attributes;
    ``folded``: the state's watermark when completed order events are applied after it (``counted_orders``)."""
    return f"""
WITH {kpi_state.counted_orders(folded)},{placed_orders()},
viewed AS (
    SELECT product_id, count(DISTINCT person_key) AS uv FROM events
    WHERE type = 'view' AND product_id IS NOT NULL AND occurred_us > $as_of - $matrix AND occurred_us <= $as_of
    GROUP BY product_id
),
sold AS (
    SELECT l.product_id,
           sum(l.quantity) FILTER (WHERE p.occurred_us > $as_of - $matrix) AS units,
           sum(l.quantity::HUGEINT * l.unit_price_cents) FILTER (WHERE p.occurred_us > $as_of - $matrix) AS gmv,
           sum(l.quantity) FILTER (WHERE p.occurred_us > $as_of - $lifecycle) AS last,
           sum(l.quantity) FILTER (WHERE p.occurred_us > $as_of - 2 * $lifecycle
                                     AND p.occurred_us <= $as_of - $lifecycle) AS previous
    FROM order_items l JOIN placed_events p ON p.event_id = l.event_id
    GROUP BY l.product_id
),
{product_state.attributes("viewed", first=True, recent=recent)},
standing AS (
    SELECT v.product_id, a.name, a.category, a.price, a.tier, v.uv, coalesce(s.units, 0) AS units,
           coalesce(s.gmv, 0) AS gmv, coalesce(s.last, 0) AS last, coalesce(s.previous, 0) AS previous,
           -- A product's first event of any type (product_state: an order is about its lines' products, another
           -- event its own), not before the lifecycle's 28 days.
           NOT coalesce(a.first_us <= $as_of - $lifecycle, FALSE) AS introduced,
           count(*) OVER () AS n,
           rank() OVER (ORDER BY v.uv DESC) - 1 AS uv_above,
           rank() OVER (ORDER BY coalesce(s.gmv, 0) DESC) - 1 AS gmv_above
    FROM viewed v LEFT JOIN sold s USING (product_id) LEFT JOIN attributes a USING (product_id)
),
-- Twice the category's median units and median price (the two middle values summed; the same for an odd count),
-- as numbers: lists joined to each product cost more than the rest of the ranking (0.7 s at 10M).
sorted_peers AS (
    SELECT category, list_sort(list(units)) AS units,
           list_sort(list(price) FILTER (WHERE price IS NOT NULL)) AS prices
    FROM standing GROUP BY category
),
peers AS (
    SELECT category, units[(len(units) + 1) // 2] + units[len(units) // 2 + 1] AS units_middles,
           prices[(len(prices) + 1) // 2] + prices[len(prices) // 2 + 1] AS prices_middles
    FROM sorted_peers
),
priced AS (
    SELECT product_id, rank() OVER (PARTITION BY category ORDER BY price) - 1 AS below,
           count(*) OVER (PARTITION BY category) AS priced_peers
    FROM standing WHERE price IS NOT NULL
)
SELECT s.product_id, s.name, s.category, s.price, s.uv, s.units, s.gmv, s.tier,
       CASE
           WHEN s.price IS NOT NULL AND 10 * q.below >= 9 * q.priced_peers
                AND 2 * s.units <= p.units_middles
               THEN 'flagship'
           WHEN s.price IS NOT NULL AND 5 * s.uv_above < s.n
                AND 2 * s.price <= p.prices_middles
               THEN 'traffic_driver'
           WHEN s.gmv > 0 AND 5 * s.gmv_above < s.n THEN 'profit'
           ELSE 'long_tail'
       END,
       CASE
           WHEN s.introduced THEN 'introduction'
           WHEN s.last = 0 AND s.previous = 0 THEN 'inactive'
           WHEN 5 * s.last > 6 * s.previous THEN 'growth'
           WHEN 5 * s.last < 4 * s.previous THEN 'decline'
           ELSE 'maturity'
       END
FROM standing s JOIN peers p ON p.category IS NOT DISTINCT FROM s.category LEFT JOIN priced q USING (product_id)
WHERE s.product_id > $after
ORDER BY s.product_id
LIMIT $take
"""


_MATRIX = {recent: _query(recent, None) for recent in (False, True)}


def matrix_page(
    cursor: duckdb.DuckDBPyConnection, as_of: datetime, *, after: str | None, limit: int
) -> tuple[list[MatrixEntry], bool]:
    """``product_matrix`` entries of the products after ``after`` (all when None), at most ``limit`` of them
    in product_id order, and whether more follow."""
    as_of_us = epoch_micros(as_of)
    # Counted orders of the longer of the two periods: the matrix's 30 days, the lifecycle's 2 x 28.
    period = max(micros(MATRIX_PERIOD), 2 * micros(LIFECYCLE_PERIOD))
    params = {"since": as_of_us - period + 1, "until": as_of_us + 1, "as_of": as_of_us,
              "matrix": micros(MATRIX_PERIOD), "lifecycle": micros(LIFECYCLE_PERIOD),
              "after": after if after is not None else "", "take": limit + 1}
    rows = product_state.fetch_standing(cursor, _query, _MATRIX, params)
    entries = [
        MatrixEntry(
            product_id=product_id, name=name, category=category, price=optional_decimal_of(price), uv=uv,
            units=int(units), gmv=decimal_of(gmv), suggested_tier=tier, declared_tier=declared, lifecycle=stage,
        )
        for product_id, name, category, price, uv, units, gmv, declared, tier, stage in rows[:limit]
    ]
    return entries, len(rows) > limit

