"""SPEC.md "Channel of an order" and the channel metrics computed by DuckDB over the fact copy.

The compiled form of ``services.funnel.domain.channels.channel_metrics`` without spend (spend, roas and cac are
the campaigns service's; the gateway joins them): the same ``ChannelMetrics`` list, held equal to the reference
by tests/unit/funnel/test_engine_channels.py on random histories.

- The channel of a counted order: its own source; else the source of the person's latest event with a source
  in [t - 30 days, t) (ties by the larger event_id): an ASOF JOIN finds the latest instant before t, and the
  events at that instant settle the tie; else ``(direct)``.
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

def _query(folded: int | None) -> str:
    """The query; ``folded``: the state's watermark when completed order events are applied after it
    (``kpi_state.counted_orders``). Persons are named by their id in the state (integers: buyers, returners and
    new customers group by them), by key when some orders come from rows not folded yet (they have no id there)."""
    person = "person_key" if folded is not None else "person_id"
    return f"""
WITH {kpi_state.counted_orders(folded)},{placed_orders()},
-- The counting events' own sources (order_state keeps none): the order events of the span, by event_id.
placed AS (
    SELECT p.*, k.source FROM placed_events p
    JOIN order_events k ON k.event_id = p.event_id AND k.occurred_us >= $since AND k.occurred_us < $until
),
traffic AS (
    SELECT source, count(DISTINCT person_key) AS uv FROM events
    WHERE type = 'view' AND occurred_us >= $since AND occurred_us < $until AND occurred_us <= $as_of
    GROUP BY source
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


_CHANNELS = _query(None)


def channel_metrics(
    cursor: duckdb.DuckDBPyConnection, start: datetime, end: datetime, as_of: datetime
) -> list[ChannelMetrics]:
    """Per source over [start, end) at as_of, by source (SPEC.md "Channel of an order", channel metrics)."""
    params = {"since": epoch_micros(start), "until": epoch_micros(end), "as_of": epoch_micros(as_of),
              "direct": DIRECT, "lookback": micros(CHANNEL_LOOKBACK)}
    with product_state.snapshot(cursor):
        folded, _ = product_state.standing(cursor)
        fresh = kpi_state.unfolded_completed(cursor, folded)
        rows = fetch(cursor, _query(folded) if fresh else _CHANNELS, params)
    metrics = []
    for source, uv, buyers, orders, gmv_cents, new_customers in rows:
        gmv = decimal_of(gmv_cents)
        metrics.append(ChannelMetrics(
            source=source, uv=uv, buyers=buyers, orders=orders, gmv=gmv, conversion_rate=ratio(buyers, uv),
            uv_value=ratio(gmv, uv), new_customers=new_customers, spend=None, roas=None, cac=None,
        ))
    return metrics
