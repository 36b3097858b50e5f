"""SPEC.md "Daily and range KPIs" computed by DuckDB over the fact copy (services/funnel/adapters/mirror.py).

The same figures as ``services.funnel.domain.kpis`` (the reference, checked against this in the tests), as
set-based SQL: every span of one answer (the range, or each of its days) is a ``bucket`` of one query, so
distinct persons, counted orders and refunds are computed in one pass over the events involved.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb

from libs.common.events import epoch_micros
from services.funnel.domain.kpis import INQUIRY_FOLLOW_UP, KpiCounts, Kpis, day_spans, kpis_of

_FOLLOW_UP_US = INQUIRY_FOLLOW_UP.days * 86_400_000_000 + INQUIRY_FOLLOW_UP.seconds * 1_000_000

# $b/$s/$e: bucket number, start (included) and end (excluded) of each span, epoch micros; the spans are
# consecutive (the range, or its days) and $lo/$hi their union. $as_of is included; an inquiry's orders may
# come up to $follow_up after it. {bucket}: the span of an event at `occurred_us` (see _bucket).
_KPIS = """
WITH spans AS (SELECT unnest($b) AS bucket, unnest($s) AS s, unnest($e) AS e),
span_events AS NOT MATERIALIZED (
    SELECT {bucket} AS bucket, k.type, k.person_key, k.occurred_us, k.order_id, k.order_status,
           k.refund_cents, k.response_seconds, k.rating
    FROM events k
    WHERE k.occurred_us >= $lo AND k.occurred_us < $hi AND k.occurred_us <= $as_of
),
traffic AS (
    SELECT bucket,
           count(*) FILTER (WHERE type = 'view') AS pv,
           count(DISTINCT person_key) FILTER (WHERE type = 'view') AS uv,
           count(DISTINCT person_key) FILTER (WHERE type = 'add_to_cart') AS cart_users,
           count(DISTINCT person_key) FILTER (WHERE type = 'inquiry') AS inquiry_users,
           count(*) FILTER (WHERE type = 'review') AS review_count,
           count(rating) FILTER (WHERE type = 'review') AS ratings,
           coalesce(sum(rating) FILTER (WHERE type = 'review'), 0) AS rating_sum,
           count(*) FILTER (WHERE type = 'review' AND rating <= 2) AS negative_ratings
    FROM span_events GROUP BY bucket
),
responses AS (
    SELECT bucket, response_seconds AS r,
           row_number() OVER (PARTITION BY bucket ORDER BY response_seconds) - 1 AS i,
           count(*) OVER (PARTITION BY bucket) AS n
    FROM span_events WHERE type = 'inquiry' AND response_seconds IS NOT NULL
),
middle AS (
    SELECT bucket, min(r) FILTER (WHERE i = (n - 1) // 2) AS low, min(r) FILTER (WHERE i = n // 2) AS high
    FROM responses GROUP BY bucket
),
-- Orders with an event where an answer can reach: their counting event is the earliest completed one.
candidates AS (
    SELECT DISTINCT order_id FROM order_events
    WHERE order_id IS NOT NULL AND occurred_us >= $lo AND occurred_us <= $hi + $follow_up
      AND occurred_us <= $as_of
),
counting AS (
    SELECT k.event_id, k.order_id, k.person_key, k.occurred_us, k.total_cents
    FROM order_events k SEMI JOIN candidates c ON k.order_id = c.order_id
    WHERE k.order_status = 'completed' AND k.occurred_us <= $as_of
    QUALIFY row_number() OVER (PARTITION BY k.order_id ORDER BY k.occurred_us, k.event_id) = 1
),
lines AS (
    SELECT i.event_id, sum(i.quantity::HUGEINT * i.unit_price_cents) AS cents
    FROM order_items i SEMI JOIN counting c ON i.event_id = c.event_id AND c.total_cents IS NULL
    GROUP BY i.event_id
),
orders AS (
    SELECT c.order_id, c.person_key, c.occurred_us, coalesce(c.total_cents, l.cents, 0) AS amount
    FROM counting c LEFT JOIN lines l ON l.event_id = c.event_id
),
placed AS (
    SELECT {order_bucket} AS bucket, o.* FROM orders o WHERE o.occurred_us >= $lo AND o.occurred_us < $hi
),
refunded AS (
    SELECT DISTINCT order_id FROM order_events
    WHERE order_status = 'refunded' AND occurred_us <= $as_of AND order_id IN (SELECT order_id FROM placed)
),
sales AS (
    SELECT bucket, count(*) AS orders, count(DISTINCT person_key) AS buyers, sum(amount) AS gmv,
           count(*) FILTER (WHERE order_id IN (SELECT order_id FROM refunded)) AS returned
    FROM placed GROUP BY bucket
),
repeaters AS (
    SELECT bucket, count(*) AS repurchasers
    FROM (SELECT bucket, person_key FROM placed GROUP BY bucket, person_key HAVING count(*) >= 2)
    GROUP BY bucket
),
refunds AS (
    SELECT r.bucket, sum(coalesce(r.refund_cents, o.amount)) AS refunds
    FROM span_events r JOIN orders o ON o.order_id = r.order_id
    WHERE r.order_status = 'refunded'
    GROUP BY r.bucket
),
converted AS (
    SELECT q.bucket, count(DISTINCT q.person_key) AS converted_inquirers
    FROM span_events q
    WHERE q.type = 'inquiry' AND EXISTS (
        SELECT 1 FROM orders o
        WHERE o.person_key = q.person_key AND o.occurred_us >= q.occurred_us
          AND o.occurred_us <= q.occurred_us + $follow_up
    )
    GROUP BY q.bucket
)
SELECT sp.bucket,
       coalesce(t.pv, 0), coalesce(t.uv, 0), coalesce(t.cart_users, 0), coalesce(t.inquiry_users, 0),
       coalesce(s.buyers, 0), coalesce(s.orders, 0), coalesce(s.gmv, 0), coalesce(f.refunds, 0),
       coalesce(p.repurchasers, 0), coalesce(c.converted_inquirers, 0), m.low, m.high, coalesce(s.returned, 0),
       coalesce(t.review_count, 0), coalesce(t.rating_sum, 0), coalesce(t.ratings, 0),
       coalesce(t.negative_ratings, 0)
FROM spans sp
LEFT JOIN traffic t USING (bucket) LEFT JOIN middle m USING (bucket) LEFT JOIN sales s USING (bucket)
LEFT JOIN repeaters p USING (bucket) LEFT JOIN refunds f USING (bucket) LEFT JOIN converted c USING (bucket)
ORDER BY sp.bucket
"""


def _bucket(column: str) -> str:
    """The index of the consecutive span holding ``column``'s time, given $origin, the start of the second span
    (a local midnight). Days are 24 hours give or take clock changes of at most a few hours, so the arithmetic
    guess is right or one off, and one comparison each way settles it."""
    guess = f"greatest(least(({column} - $origin) // 86400000000 + 1, len($s) - 1), 0)"
    return (f"({guess} - ({column} < list_extract($s, {guess} + 1))::INTEGER"
            f" + ({column} >= list_extract($e, {guess} + 1))::INTEGER)")


_DAYS = _KPIS.replace("{bucket}", _bucket("k.occurred_us")).replace("{order_bucket}", _bucket("o.occurred_us"))
_RANGE = _KPIS.replace("{bucket}", "0").replace("{order_bucket}", "0")


def _money(cents: Any) -> Decimal:
    return Decimal(int(cents)).scaleb(-2)


def span_kpis(cursor: duckdb.DuckDBPyConnection, spans: list[tuple[datetime, datetime]], as_of: datetime) -> list[Kpis]:
    """The KPIs of each span [start, end) as known at as_of, in the order given."""
    if not spans:
        return []
    starts = [epoch_micros(start) for start, _ in spans]
    ends = [epoch_micros(end) for _, end in spans]
    if len(spans) > 1 and any(end != start for end, start in zip(ends, starts[1:], strict=False)):
        raise ValueError("the spans of one query must be consecutive")
    parameters = {"b": list(range(len(spans))), "s": starts, "e": ends, "lo": starts[0], "hi": ends[-1],
                  "as_of": epoch_micros(as_of), "follow_up": _FOLLOW_UP_US}
    if len(spans) == 1:
        rows = cursor.execute(_RANGE, parameters).fetchall()
    else:
        rows = cursor.execute(_DAYS, parameters | {"origin": starts[1]}).fetchall()
    figures = []
    for row in rows:
        (_, pv, uv, cart_users, inquiry_users, buyers, orders, gmv, refunds, repurchasers, converted, low, high,
         returned, review_count, rating_sum, ratings, negative_ratings) = row
        figures.append(kpis_of(KpiCounts(
            pv=pv, uv=uv, cart_users=cart_users, inquiry_users=inquiry_users, buyers=buyers, orders=orders,
            gmv=_money(gmv), refunds=_money(refunds), repurchasers=repurchasers, converted_inquirers=converted,
            # Python's median of the two middle values, exactly as the reference takes it.
            median_response_seconds=None if low is None else (low + high) / 2,
            returned=returned, review_count=review_count, rating_sum=int(rating_sum), ratings=ratings,
            negative_ratings=negative_ratings,
        )))
    return figures


def kpis(
    cursor: duckdb.DuckDBPyConnection, start: datetime, end: datetime, as_of: datetime, time_zone: str | None
) -> tuple[Kpis, dict[date, Kpis] | None]:
    """Range KPIs, and per day of the time zone when one is given (SPEC.md "Daily and range KPIs")."""
    totals = span_kpis(cursor, [(start, end)], as_of)[0]
    if time_zone is None:
        return totals, None
    days = day_spans(start, end, time_zone)
    figures = span_kpis(cursor, [(day_start, day_end) for _, day_start, day_end in days], as_of)
    return totals, {day: kpi for (day, _, _), kpi in zip(days, figures, strict=True)}
