"""SPEC.md "Channel of an order" and the channel metrics computed by DuckDB over the fact copy.

The compiled form of ``services.funnel.domain.channels.channel_metrics`` without spend (spend, roas and cac are
the campaigns service's; the gateway joins them): the same ``ChannelMetrics`` list, held equal to the reference
by tests/unit/funnel/test_engine_channels.py on random histories.

- The channel of a counted order: its own source; else the source of the person's latest event with a source
  in [t - 30 days, t) (ties by the larger event_id): an ASOF JOIN finds the latest instant before t, and the
  events at that instant settle the tie; else ``(direct)``.
- uv per source: the viewers of the range's whole days (of the KPI state's time zone, at or before as_of) are the
  union of ``source_presence``'s bitstrings (its large (day, source)s) and ``source_viewers``' ids (the others); the
  rest (partial days, views not folded yet) is read from the rows and added by person id (by key for a person
  without one), as ``kpis.py`` counts uv: the bitstrings' count plus the distinct ids not in their union;
- counted orders: each order's counting event from the KPI state (``kpi_state.counted_orders``: ``order_state``
  with the completed events not folded yet), not a window over the order events;
- ``new_customers``: buyers in the range with no counted order before it (the counting events before the range,
  from the same state). The person's first order in the range gives the channel.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from libs.common.events import epoch_micros
from services.funnel.domain.channels import CHANNEL_LOOKBACK, ChannelMetrics
from services.funnel.domain.facts import DIRECT
from services.funnel.domain.stats import ratio
from services.funnel.engine import kpi_state, product_state
from services.funnel.engine.facts import decimal_of, fetch, micros, placed_orders
from services.funnel.engine.kpis import whole_days


def _query(folded: int | None, unkept_views: str) -> str:
    """The query; ``folded``: the state's watermark when completed order events are applied after it
    (``kpi_state.counted_orders``). Persons are named by their id in the state (integers: buyers, returners and
    new customers group by them), by key when some orders come from rows not folded yet (they have no id there).
    ``unkept_views``: the viewers per source not in ``source_presence``'s whole days (``_UNKEPT_VIEWS``)."""
    person = "person_key" if folded is not None else "person_id"
    return f"""
WITH {kpi_state.counted_orders(folded)},{placed_orders()},
-- The counting events' own sources (order_state keeps none): the order events of the span, by event_id.
placed AS (
    SELECT p.*, k.source FROM placed_events p
    JOIN order_events k ON k.event_id = p.event_id AND k.occurred_us >= $since AND k.occurred_us < $until
),
-- Viewers per source: of the whole days from the KPI state (the bitstrings of its large (day, source)s, the id rows
-- of the others), the rest from the rows by person id (by key for a person without one, who is in no bitstring).
-- The ids count where the bitstrings' union lacks them: no bitstring is built per source for them.
kept_views AS (
    SELECT source, bit_or(bits) AS bits FROM source_presence WHERE day_start >= $w0 AND day_start < $w1 GROUP BY source
),
{unkept_views},
viewer_ids AS (
    SELECT source, id FROM source_viewers WHERE day_start >= $w0 AND day_start < $w1
    UNION ALL
    SELECT source, id FROM unkept_views WHERE id IS NOT NULL
),
more_viewers AS (
    SELECT v.source, count(DISTINCT v.id) AS viewers
    FROM viewer_ids v LEFT JOIN kept_views k USING (source)
    WHERE k.bits IS NULL OR get_bit(k.bits, v.id::INTEGER) = 0
    GROUP BY v.source
),
newcomer_views AS (
    SELECT source, count(DISTINCT person_key) AS viewers FROM unkept_views WHERE id IS NULL GROUP BY source
),
traffic AS (
    SELECT source, coalesce(bit_count(k.bits), 0) + coalesce(m.viewers, 0) + coalesce(n.viewers, 0) AS uv
    FROM kept_views k FULL JOIN more_viewers m USING (source) FULL JOIN newcomer_views n USING (source)
),
unsourced AS (
    SELECT event_id, person_key, occurred_us FROM placed WHERE source = $direct
),
-- The sourced events of those persons, found by a 64-bit hash of the key (a semi join on integers, about half
-- the cost of one on the strings over millions of events); another person sharing a hash is no touch of
-- theirs: the ASOF JOIN below matches the keys themselves.
touches AS (
    SELECT person_key, occurred_us, event_id, source FROM events
    WHERE source <> $direct AND occurred_us >= $since - $lookback AND occurred_us < $until
      AND hash(person_key) IN (SELECT hash(person_key) FROM unsourced)
),
latest_touch AS (
    SELECT u.event_id, u.person_key, t.occurred_us AS touched
    FROM unsourced u ASOF JOIN touches t ON t.person_key = u.person_key AND u.occurred_us > t.occurred_us
    WHERE t.occurred_us >= u.occurred_us - $lookback
),
touch_source AS (
    SELECT l.event_id, arg_max(t.source, t.event_id) AS source
    FROM latest_touch l JOIN touches t ON t.person_key = l.person_key AND t.occurred_us = l.touched
    GROUP BY l.event_id
),
channelled AS (
    SELECT p.event_id, p.{person} AS person, p.occurred_us, p.amount,
           CASE WHEN p.source <> $direct THEN p.source ELSE coalesce(s.source, $direct) END AS channel
    FROM placed p LEFT JOIN touch_source s ON s.event_id = p.event_id
),
sales AS (
    SELECT channel AS source, count(*) AS orders, count(DISTINCT person) AS buyers, sum(amount) AS gmv
    FROM channelled GROUP BY channel
),
-- Persons with a counted order before the range (its counting event's person).
returners AS (
    SELECT DISTINCT {person} AS person FROM counted WHERE occurred_us < $since AND occurred_us <= $as_of
),
newcomers AS (
    SELECT source, count(*) AS new_customers FROM (
        SELECT arg_min(channel, struct_pack(t := occurred_us, eid := event_id)) AS source
        FROM channelled c ANTI JOIN returners r ON r.person = c.person
        GROUP BY c.person
    ) GROUP BY source
),
sources AS (
    SELECT source FROM traffic UNION SELECT source FROM sales UNION SELECT source FROM newcomers
)
SELECT s.source, coalesce(t.uv, 0), coalesce(a.buyers, 0), coalesce(a.orders, 0), coalesce(a.gmv, 0),
       coalesce(n.new_customers, 0)
FROM sources s LEFT JOIN traffic t USING (source) LEFT JOIN sales a USING (source)
LEFT JOIN newcomers n USING (source)
ORDER BY s.source
"""


# The loose views (``_loose_views``) with their person's id (NULL for a person without one); when there are loose
# views only: a join with person_ids builds the hash table of every id (0.5 s at 10M), whichever side is empty.
_UNKEPT_VIEWS = """loose_views AS (
    {loose}
),
unkept_views AS MATERIALIZED (
    SELECT l.source, l.person_key, i.id FROM loose_views l LEFT JOIN person_ids i ON i.person_key = l.person_key
)"""
_NO_UNKEPT_VIEWS = ("unkept_views AS (SELECT NULL::VARCHAR AS source, NULL::VARCHAR AS person_key, NULL::BIGINT AS id "
                    "WHERE false)")


def _loose_views(since: int, until: int, as_of: int, whole: tuple[int, int]) -> str:
    """SQL: (source, person_key) of the views in [since, until) up to as_of outside the whole days ``whole`` (as
    literal time bounds, which zone maps use), and of those inside them applied after $folded."""
    w0, w1 = whole
    limit = min(until, as_of + 1)
    parts = [(since, w0), (w1, limit)] if w0 < w1 else [(since, limit)]
    return "\n    UNION ALL\n    ".join(
        [f"SELECT source, person_key FROM events WHERE type = 'view' AND occurred_us >= {int(low)} "
         f"AND occurred_us < {int(high)}" for low, high in parts if low < high]
        + ["SELECT source, person_key FROM events WHERE type = 'view' AND occurred_us >= $w0 AND occurred_us < $w1 "
           "AND applied > $folded"])


def channel_metrics(
    cursor: duckdb.DuckDBPyConnection, start: datetime, end: datetime, as_of: datetime
) -> list[ChannelMetrics]:
    """Per source over [start, end) at as_of, by source (SPEC.md "Channel of an order", channel metrics)."""
    params = {"since": epoch_micros(start), "until": epoch_micros(end), "as_of": epoch_micros(as_of),
              "direct": DIRECT, "lookback": micros(CHANNEL_LOOKBACK)}
    with product_state.snapshot(cursor):
        folded, _, time_zone = kpi_state.standing(cursor)
        whole = whole_days(params["since"], params["until"], params["as_of"], time_zone)
        params |= {"w0": whole[0], "w1": whole[1], "folded": folded}
        loose = _loose_views(params["since"], params["until"], params["as_of"], whole)
        unkept = (_UNKEPT_VIEWS.replace("{loose}", loose)
                  if fetch(cursor, f"SELECT count(*) FROM ({loose})", params)[0][0] else _NO_UNKEPT_VIEWS)
        fresh = kpi_state.unfolded_completed(cursor, folded)
        rows = fetch(cursor, _query(folded if fresh else None, unkept), params)
    metrics = []
    for source, uv, buyers, orders, gmv_cents, new_customers in rows:
        gmv = decimal_of(gmv_cents)
        metrics.append(ChannelMetrics(
            source=source, uv=uv, buyers=buyers, orders=orders, gmv=gmv, conversion_rate=ratio(buyers, uv),
            uv_value=ratio(gmv, uv), new_customers=new_customers, spend=None, roas=None, cac=None,
        ))
    return metrics
