"""SPEC.md "Daily and range KPIs" computed by DuckDB over the fact copy (services/funnel/adapters/mirror.py).

The same figures as ``services.funnel.domain.kpis`` (the reference, checked against this in the tests), as
set-based SQL: every span of one answer (the range, or each of its days) is a ``bucket`` of one query, so
distinct persons, counted orders and refunds are computed in one pass over the events involved.

Two forms: ``_KEPT`` reads the copy's KPI state (``kpi_state.py``: per-day bitstrings of person ids, each order's
counting event, the folded refunds and inquiries by integer keys) with the rows not folded yet, and is what the
service runs; ``_KPIS``, the plain form over the rows alone, is what DuckDB over other files of the same rows can
run (bench/funnel_queries.py's Parquet comparison). The hypothesis test holds both equal to the domain.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from libs.common.events import epoch_micros
from services.funnel.domain.kpis import INQUIRY_FOLLOW_UP, KpiCounts, Kpis, day_spans, kpis_of
from services.funnel.engine import kpi_state, product_state
from services.funnel.engine.facts import fetch, first_completed

_FOLLOW_UP_US = INQUIRY_FOLLOW_UP.days * 86_400_000_000 + INQUIRY_FOLLOW_UP.seconds * 1_000_000

# Parts both forms share. The span's events ({bucket}: the span an event is in); the median response time's middle
# values; the orders placed in each span and the persons placing two or more ({person}: how a person is named).
_SPAN_EVENTS = """span_events AS NOT MATERIALIZED (
    SELECT {bucket} AS bucket, k.type, k.person_key, k.occurred_us, k.order_id, k.order_status,
           k.refund_cents, k.response_seconds, k.rating
    FROM events k
    WHERE k.occurred_us >= $lo AND k.occurred_us < $hi AND k.occurred_us <= $as_of
),
"""
_PLACED = """placed AS (
    SELECT {order_bucket} AS bucket, o.* FROM orders o WHERE o.occurred_us >= $lo AND o.occurred_us < $hi
),
"""
_REPEATERS = """repeaters AS (
    SELECT bucket, count(*) AS repurchasers
    FROM (SELECT bucket, {person} FROM placed GROUP BY bucket, {person} HAVING count(*) >= 2)
    GROUP BY bucket
),
"""
# Persons with an inquiry in the span followed by an order within $follow_up, by key.
_CONVERTED_FRESH = """converted AS (
    SELECT q.bucket, count(DISTINCT q.person_key) AS converted_inquirers
    FROM span_events q
    WHERE q.type = 'inquiry' AND EXISTS (
        SELECT 1 FROM orders o
        WHERE o.person_key = q.person_key AND o.occurred_us >= q.occurred_us
          AND o.occurred_us <= q.occurred_us + $follow_up
    )
    GROUP BY q.bucket
)"""
# The answer's columns per span, in the order span_kpis reads them into KpiCounts ({v}: the views' CTE, {h}: the
# distinct persons').
_FIGURES = """SELECT sp.bucket,
       coalesce({v}.pv, 0), coalesce({h}.uv, 0), coalesce({h}.cart_users, 0), coalesce({h}.inquiry_users, 0),
       coalesce(s.buyers, 0), coalesce(s.orders, 0), coalesce(s.gmv, 0), coalesce(f.refunds, 0),
       coalesce(p.repurchasers, 0), coalesce(c.converted_inquirers, 0), m.low, m.high, coalesce(s.returned, 0),
       coalesce(t.review_count, 0), coalesce(t.rating_sum, 0), coalesce(t.ratings, 0),
       coalesce(t.negative_ratings, 0)
FROM spans sp
"""
_RESPONSES = """responses AS (
    SELECT bucket, response_seconds AS r,
           row_number() OVER (PARTITION BY bucket ORDER BY response_seconds) - 1 AS i,
           count(*) OVER (PARTITION BY bucket) AS n
    FROM span_events WHERE type = 'inquiry' AND response_seconds IS NOT NULL
),
middle AS (
    SELECT bucket, min(r) FILTER (WHERE i = (n - 1) // 2) AS low, min(r) FILTER (WHERE i = n // 2) AS high
    FROM responses GROUP BY bucket
),
"""

# $b/$s/$e: bucket number, start (included) and end (excluded) of each span, epoch micros; the spans are
# consecutive (the range, or its days) and $lo/$hi their union. $as_of is included; an inquiry's orders may
# come up to $follow_up after it. {bucket}: the span of an event at `occurred_us` (see _bucket).
_KPIS = """
WITH spans AS (SELECT unnest($b) AS bucket, unnest($s) AS s, unnest($e) AS e),
""" + _SPAN_EVENTS + """traffic AS (
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
""" + _RESPONSES + """-- Orders with an event where an answer can reach: their counting event is the earliest completed one.
candidates AS (
    SELECT DISTINCT order_id FROM order_events
    WHERE order_id IS NOT NULL AND occurred_us >= $lo AND occurred_us <= $hi + $follow_up
      AND occurred_us <= $as_of
),
counting AS (
    """ + first_completed("e.event_id, e.order_id, e.person_key, e.occurred_us, e.total_cents",
                            "e.order_id IN (SELECT order_id FROM candidates) AND e.occurred_us <= $as_of") + """
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
""" + _PLACED + """refunded AS (
    SELECT DISTINCT order_id FROM order_events
    WHERE order_status = 'refunded' AND occurred_us <= $as_of AND order_id IN (SELECT order_id FROM placed)
),
sales AS (
    SELECT bucket, count(*) AS orders, count(DISTINCT person_key) AS buyers, sum(amount) AS gmv,
           count(*) FILTER (WHERE order_id IN (SELECT order_id FROM refunded)) AS returned
    FROM placed GROUP BY bucket
),
""" + _REPEATERS.replace("{person}", "person_key") + """refunds AS (
    SELECT r.bucket, sum(coalesce(r.refund_cents, o.amount)) AS refunds
    FROM span_events r JOIN orders o ON o.order_id = r.order_id
    WHERE r.order_status = 'refunded'
    GROUP BY r.bucket
),
""" + _CONVERTED_FRESH + """
""" + _FIGURES.replace("{v}", "t").replace("{h}", "t") + """LEFT JOIN traffic t USING (bucket) LEFT JOIN middle m USING (bucket) LEFT JOIN sales s USING (bucket)
LEFT JOIN repeaters p USING (bucket) LEFT JOIN refunds f USING (bucket) LEFT JOIN converted c USING (bucket)
ORDER BY sp.bucket
"""



# The same figures with the KPI state (kpi_state.py): distinct persons of whole days from ``presence`` and the
# rest ({loose}: the parts of the spans outside them, up to $as_of, as literal time bounds that zone maps use) from
# the rows, joined in by person id, with the rows not folded yet (applied after $folded) inside the whole days;
# each order's counting event from ``order_state`` and the completed events not folded yet. $w0/$w1: the whole
# days (of the state's zone) each span uses, [w0, w1), empty when w0 = w1; $last_id: the state's capacity - 1.
_KEPT = """
WITH spans AS (SELECT unnest($b) AS bucket, unnest($s) AS s, unnest($e) AS e, unnest($w0) AS w0, unnest($w1) AS w1),
""" + _SPAN_EVENTS + """views AS (
    SELECT bucket, count(*) AS pv FROM span_events WHERE type = 'view' GROUP BY bucket
),
reviews AS (
    SELECT bucket, count(*) AS review_count, count(rating) AS ratings, coalesce(sum(rating), 0) AS rating_sum,
           count(*) FILTER (WHERE rating <= 2) AS negative_ratings
    FROM span_events WHERE type = 'review' GROUP BY bucket
),
""" + _RESPONSES + """kept AS (
    SELECT sp.bucket, p.type, bit_or(p.bits) AS bits
    FROM spans sp JOIN presence p ON p.day_start >= sp.w0 AND p.day_start < sp.w1
    GROUP BY sp.bucket, p.type
),
loose AS (
    {loose}
    UNION ALL
    SELECT sp.bucket, k.type, k.person_key
    FROM events k JOIN spans sp ON k.occurred_us >= sp.w0 AND k.occurred_us < sp.w1
    WHERE k.applied > $folded AND k.type IN ('view', 'add_to_cart', 'inquiry')
),
unkept AS (
    SELECT l.bucket, l.type, """ + kpi_state.ROW_PERSONS + """
    FROM loose l LEFT JOIN person_ids i ON i.person_key = l.person_key
    GROUP BY l.bucket, l.type
),
persons AS (
    SELECT bucket, type,
           """ + kpi_state.UNION_COUNT + """ AS n
    FROM kept k FULL JOIN unkept u USING (bucket, type)
),
reach AS (
    SELECT bucket, sum(n) FILTER (WHERE type = 'view') AS uv, sum(n) FILTER (WHERE type = 'add_to_cart') AS cart_users,
           sum(n) FILTER (WHERE type = 'inquiry') AS inquiry_users
    FROM persons GROUP BY bucket
),
-- Each order's counting event: the state's, unless a completed event not folded yet is earlier.
{counted}orders AS (
    SELECT * FROM counted WHERE occurred_us >= $lo AND occurred_us <= $hi + $follow_up AND occurred_us <= $as_of
),
""" + _PLACED + """sales AS (
    SELECT bucket, count(*) AS orders, count(DISTINCT {person}) AS buyers, sum(amount) AS gmv,
           count(*) FILTER (WHERE {returned}) AS returned
    FROM placed GROUP BY bucket
),
""" + _REPEATERS + """{refunds}
{converted}
""" + _FIGURES.replace("{v}", "v").replace("{h}", "h") + """LEFT JOIN views v USING (bucket) LEFT JOIN reviews t USING (bucket) LEFT JOIN reach h USING (bucket) LEFT JOIN middle m USING (bucket)
LEFT JOIN sales s USING (bucket) LEFT JOIN repeaters p USING (bucket) LEFT JOIN refunds f USING (bucket)
LEFT JOIN converted c USING (bucket)
ORDER BY sp.bucket
"""


def _bucket(column: str) -> str:
    """The index of the consecutive span holding ``column``'s time, given $origin, the start of the second span
    (a local midnight). Days are 24 hours give or take clock changes of at most a few hours, so the arithmetic
    guess is right or one off, and one comparison each way settles it."""
    guess = f"greatest(least(({column} - $origin) // 86400000000 + 1, len($s) - 1), 0)"
    return (f"({guess} - ({column} < list_extract($s, {guess} + 1))::INTEGER"
            f" + ({column} >= list_extract($e, {guess} + 1))::INTEGER)")


def _form(sql: str, days: bool) -> str:
    if days:
        return sql.replace("{bucket}", _bucket("k.occurred_us")).replace("{order_bucket}", _bucket("o.occurred_us"))
    return sql.replace("{bucket}", "0").replace("{order_bucket}", "0")


_DAYS, _RANGE = _form(_KPIS, True), _form(_KPIS, False)


def _money(cents: Any) -> Decimal:
    return Decimal(int(cents)).scaleb(-2)


def _local_midnight(moment: int, zone: ZoneInfo, *, after: bool) -> int:
    """The first start of a day of ``zone`` at or after ``moment`` (epoch micros), or the last at or before it."""
    day = datetime.fromtimestamp(moment / 1e6, UTC).astimezone(zone).date()
    start = epoch_micros(datetime.combine(day, time(), zone).astimezone(UTC))
    step = timedelta(days=1 if after else -1)
    while (start < moment) if after else (start > moment):
        day += step
        start = epoch_micros(datetime.combine(day, time(), zone).astimezone(UTC))
    return start


def whole_days(start: int, end: int, as_of: int, time_zone: str) -> tuple[int, int]:
    """[w0, w1): the whole days of ``time_zone`` inside [start, end) whose every moment is at or before as_of
    (epoch micros); (0, 0) when there is none."""
    zone = ZoneInfo(time_zone)
    first = _local_midnight(start, zone, after=True)
    last = _local_midnight(min(end, as_of + 1), zone, after=False)
    return (first, last) if first < last else (0, 0)


# Refunds in the span, each of an order counted up to $as_of: the folded ones from refund_state, by the order's
# number, when no completed order event is unfolded (the state's orders are then the counted ones); the rest by
# order_id over the rows.
_REFUNDS_BY_ROWS = """span_refunds AS (
    SELECT {bucket} AS bucket, k.order_id, k.refund_cents FROM order_events k
    WHERE k.occurred_us >= $lo AND k.occurred_us < $hi AND k.occurred_us <= $as_of AND k.order_status = 'refunded'
      {unfolded_only}
),
refunds_by_rows AS (
    SELECT r.bucket, coalesce(r.refund_cents, o.amount) AS cents
    FROM span_refunds r JOIN counted o ON o.order_id = r.order_id
    WHERE o.occurred_us <= $as_of
),"""
_REFUNDS_KEPT = """folded_refunds AS (
    SELECT {bucket} AS bucket, coalesce(k.refund_cents, o.amount) AS cents
    FROM refund_state k JOIN order_state o ON o.num = k.order_num
    WHERE k.occurred_us >= $lo AND k.occurred_us < $hi AND k.occurred_us <= $as_of AND o.occurred_us <= $as_of
),"""
_REFUNDS_SUM = """refunds AS (SELECT bucket, sum(cents) AS refunds FROM ({parts}) GROUP BY bucket),"""


def _refunds(refunds: int, completed: int) -> str:
    if completed:
        return (_REFUNDS_BY_ROWS.replace("{unfolded_only}", "")
                + _REFUNDS_SUM.replace("{parts}", "SELECT * FROM refunds_by_rows"))
    if not refunds:
        return _REFUNDS_KEPT + _REFUNDS_SUM.replace("{parts}", "SELECT * FROM folded_refunds")
    return (_REFUNDS_KEPT + _REFUNDS_BY_ROWS.replace("{unfolded_only}", "AND k.applied > $folded")
            + _REFUNDS_SUM.replace("{parts}", "SELECT * FROM folded_refunds UNION ALL SELECT * FROM refunds_by_rows"))


# An order placed in the span is returned when refunded up to $as_of: its earliest refund folded (refund_us), or a
# refund not folded yet.
_RETURNED = "refund_us <= $as_of"
_RETURNED_FRESH = """refund_us <= $as_of OR order_id IN (
               SELECT order_id FROM order_events
               WHERE applied > $folded AND order_status = 'refunded' AND occurred_us <= $as_of)"""
# Persons with an inquiry in the span followed by an order within $follow_up: by person id over the folded
# inquiries when every inquiry and completed order is folded (the state's orders carry the person's id), else by
# person key over the rows.
_CONVERTED = """converted AS (
    SELECT {bucket} AS bucket, count(DISTINCT k.person_id) AS converted_inquirers
    FROM inquiry_state k
    WHERE k.occurred_us >= $lo AND k.occurred_us < $hi AND k.occurred_us <= $as_of AND EXISTS (
        SELECT 1 FROM orders o
        WHERE o.person_id = k.person_id AND o.occurred_us >= k.occurred_us
          AND o.occurred_us <= k.occurred_us + $follow_up
    )
    GROUP BY ALL
)"""


def _kept_sql(starts: list[int], ends: list[int], kept: list[tuple[int, int]], as_of: int, folded: int,
              days: bool, unfolded: tuple[int, int, int]) -> str:
    """_KEPT for these spans: the rows outside the whole days (``kept``) as literal time bounds, adjacent parts
    merged (the span of a row is its bucket, as in span_events); the corrections for rows not folded yet only where
    there are some (``unfolded``: how many of them are inquiries, refunds and completed orders)."""
    parts: list[list[int]] = []
    for start, end, (w0, w1) in zip(starts, ends, kept, strict=True):
        limit = min(end, as_of + 1)
        for low, high in ((start, min(w0, limit)), (max(w1, start), limit)) if w0 < w1 else ((start, limit),):
            if low >= high:
                continue
            if parts and parts[-1][1] == low:
                parts[-1][1] = high
            else:
                parts.append([low, high])
    bucket = _bucket("k.occurred_us") if days else "0"
    loose = "\n    UNION ALL\n    ".join(
        f"SELECT {bucket} AS bucket, k.type, k.person_key FROM events k WHERE k.occurred_us >= {low} "
        f"AND k.occurred_us < {high} AND k.type IN ('view', 'add_to_cart', 'inquiry')" for low, high in parts
    ) or "SELECT NULL::INTEGER AS bucket, NULL::VARCHAR AS type, NULL::VARCHAR AS person_key WHERE false"
    inquiries, refunds, completed = unfolded
    counted = kpi_state.counted_orders(folded if completed else None) + ",\n"
    converted = _CONVERTED_FRESH if inquiries or completed else _CONVERTED
    sql = (_KEPT.replace("{loose}", loose).replace("{counted}", counted).replace("{converted}", converted)
           .replace("{returned}", _RETURNED_FRESH if refunds else _RETURNED)
           .replace("{refunds}", _refunds(refunds, completed))
           # The state's orders carry the person's id; an unfolded one does not.
           .replace("{person}", "person_key" if completed else "person_id"))
    return _form(sql, days)


def span_kpis(cursor: duckdb.DuckDBPyConnection, spans: list[tuple[datetime, datetime]], as_of: datetime, *,
              kept: bool = True) -> list[Kpis]:
    """The KPIs of each span [start, end) as known at as_of, in the order given. ``kept``: with the copy's KPI
    state (kpi_state.py); without it, the plain SQL over the rows alone (which is what DuckDB over other files of
    the same rows can run)."""
    if not spans:
        return []
    starts = [epoch_micros(start) for start, _ in spans]
    ends = [epoch_micros(end) for _, end in spans]
    if len(spans) > 1 and any(end != start for end, start in zip(ends, starts[1:], strict=False)):
        raise ValueError("the spans of one query must be consecutive")
    moment = epoch_micros(as_of)
    parameters = {"b": list(range(len(spans))), "s": starts, "e": ends, "lo": starts[0], "hi": ends[-1],
                  "as_of": moment, "follow_up": _FOLLOW_UP_US}
    if len(spans) > 1:
        parameters["origin"] = starts[1]
    days = len(spans) > 1
    if not kept:
        rows = cursor.execute(_DAYS if days else _RANGE, parameters).fetchall()
    else:
        with product_state.snapshot(cursor):
            folded, capacity, time_zone = kpi_state.standing(cursor)
            whole = [whole_days(start, end, moment, time_zone) for start, end in zip(starts, ends, strict=True)]
            unfolded = cursor.execute(
                "SELECT count(*) FILTER (WHERE type = 'inquiry'), count(*) FILTER (WHERE order_status = 'refunded'), "
                "count(*) FILTER (WHERE order_status = 'completed') FROM events WHERE applied > ?", [folded]
            ).fetchone()
            sql = _kept_sql(starts, ends, whole, moment, folded, days, unfolded)  # type: ignore[arg-type]
            rows = fetch(cursor, sql, parameters | {
                "w0": [w0 for w0, _ in whole], "w1": [w1 for _, w1 in whole], "folded": folded,
                "last_id": capacity - 1})
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
    cursor: duckdb.DuckDBPyConnection, start: datetime, end: datetime, as_of: datetime, time_zone: str | None, *,
    kept: bool = True,
) -> tuple[Kpis, dict[date, Kpis] | None]:
    """Range KPIs, and per day of the time zone when one is given (SPEC.md "Daily and range KPIs"). ``kept``: see
    ``span_kpis``."""
    totals = span_kpis(cursor, [(start, end)], as_of, kept=kept)[0]
    if time_zone is None:
        return totals, None
    days = day_spans(start, end, time_zone)
    figures = span_kpis(cursor, [(day_start, day_end) for _, day_start, day_end in days], as_of, kept=kept)
    return totals, {day: kpi for (day, _, _), kpi in zip(days, figures, strict=True)}
