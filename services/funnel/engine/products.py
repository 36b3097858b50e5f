"""SPEC.md "Product metrics" computed by DuckDB over the fact copy (services/funnel/adapters/mirror.py).

The compiled form of ``services.funnel.domain.products.product_metrics`` (the reference, held equal to this by
tests/unit/funnel/test_engine_products.py on random histories): the same ``ProductMetrics``, to the Decimal
and the float. One page at a time: the page's products are chosen first (keyset on product_id: those after
the cursor, in order, one more than the page to tell whether another follows), and only they are counted and
given their attributes (from ``product_state``, not from every product's history).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from libs.common.events import epoch_micros
from services.funnel.domain.products import ProductMetrics
from services.funnel.domain.stats import ratio
from services.funnel.engine import kpi_state, product_state
from services.funnel.engine.facts import decimal_of, placed_orders


def _query(recent: bool, folded: int | None) -> str:
    """The query; ``recent``: as_of is at or after product_state's horizon, so the state gives the attributes;
    ``folded``: the state's watermark when completed order events are applied after it (``counted_orders``)."""
    return f"""
WITH {kpi_state.counted_orders(folded)},{placed_orders()},
activity AS (
    SELECT product_id, type, person_key, rating FROM events
    WHERE occurred_us >= $since AND occurred_us < $until AND occurred_us <= $as_of
      AND type <> 'order' AND product_id IS NOT NULL AND product_id > $after
),
page AS (
    SELECT product_id FROM (
        SELECT product_id FROM activity UNION SELECT product_id FROM placed_lines WHERE product_id > $after
    ) ORDER BY product_id LIMIT $take
),
traffic AS (
    SELECT product_id,
           count(*) FILTER (WHERE type = 'view') AS views,
           count(DISTINCT person_key) FILTER (WHERE type = 'view') AS uv,
           count(DISTINCT person_key) FILTER (WHERE type = 'add_to_cart') AS cart_users,
           count(*) FILTER (WHERE type = 'review') AS review_count,
           count(rating) FILTER (WHERE type = 'review') AS ratings,
           coalesce(sum(rating) FILTER (WHERE type = 'review'), 0) AS rating_sum,
           count(*) FILTER (WHERE type = 'review' AND rating <= 2) AS negative_ratings,
           count(*) FILTER (WHERE type = 'inquiry') AS inquiry_count
    FROM activity SEMI JOIN page USING (product_id) GROUP BY product_id
),
bought AS (
    SELECT l.product_id, p.order_id, p.person_key, l.quantity, l.cents
    FROM placed_lines l SEMI JOIN page USING (product_id) JOIN placed_events p ON p.event_id = l.event_id
),
refunded AS (
    -- Refunds up to as_of of counted orders count, whenever they fall (SPEC.md "Definitions", Orders).
    SELECT DISTINCT order_id FROM order_events
    WHERE order_status = 'refunded' AND occurred_us <= $as_of AND order_id IN (SELECT order_id FROM bought)
),
sales AS (
    SELECT product_id, sum(quantity) AS units, sum(cents) AS gmv, count(DISTINCT person_key) AS buyers,
           count(DISTINCT order_id) AS orders,
           count(DISTINCT order_id) FILTER (WHERE order_id IN (SELECT order_id FROM refunded)) AS returned
    FROM bought GROUP BY product_id
),
{product_state.attributes("page", ("name", "category"), recent=recent)}
SELECT g.product_id, a.name, a.category,
       coalesce(t.views, 0), coalesce(t.uv, 0), coalesce(t.cart_users, 0), coalesce(s.buyers, 0),
       coalesce(s.units, 0), coalesce(s.gmv, 0), coalesce(t.review_count, 0), coalesce(t.ratings, 0),
       coalesce(t.rating_sum, 0), coalesce(t.negative_ratings, 0), coalesce(s.orders, 0), coalesce(s.returned, 0),
       coalesce(t.inquiry_count, 0)
FROM page g LEFT JOIN traffic t USING (product_id) LEFT JOIN sales s USING (product_id)
LEFT JOIN attributes a USING (product_id)
ORDER BY g.product_id
"""


_PRODUCTS = {recent: _query(recent, None) for recent in (False, True)}


def product_page(
    cursor: duckdb.DuckDBPyConnection, start: datetime, end: datetime, as_of: datetime, *, after: str | None,
    limit: int,
) -> tuple[list[ProductMetrics], bool]:
    """``product_metrics`` of the products after ``after`` (all when None), at most ``limit`` of them in
    product_id order, and whether more follow."""
    params = {"since": epoch_micros(start), "until": epoch_micros(end), "as_of": epoch_micros(as_of),
              "after": after if after is not None else "", "take": limit + 1}
    rows = product_state.fetch_standing(cursor, _query, _PRODUCTS, params)
    metrics = []
    for row in rows[:limit]:
        (product_id, name, category, views, uv, cart_users, buyers, units, gmv_cents, review_count, ratings,
         rating_sum, negative_ratings, orders, returned, inquiry_count) = row
        gmv = decimal_of(gmv_cents)
        metrics.append(ProductMetrics(
            product_id=product_id, name=name, category=category, views=views, uv=uv, cart_users=cart_users,
            buyers=buyers, units=int(units), gmv=gmv, conversion_rate=ratio(buyers, uv), uv_value=ratio(gmv, uv),
            review_count=review_count, avg_rating=ratio(int(rating_sum), ratings),
            negative_share=ratio(negative_ratings, ratings), return_rate=ratio(returned, orders),
            inquiry_count=inquiry_count,
        ))
    return metrics, len(rows) > limit

