"""Per folded row of the fact copy that is not a view, the time of its person's latest view at or before it: the first
link of every person funnel that starts with a plain view.

A funnel's step 2 needs, for each of its events e, the latest start of a chain reaching it: the latest step-1
event in range at or before t(e) (funnels.py). When step 1 is every view (no filter), that is the person's latest
view at or before t(e) if it lies in range, and none when it lies before the range (every earlier view does too).
At 10M events the ASOF JOIN that finds it at query time was 447 of the 4-step funnel's 505 ms (2M carts against
6M views, sorted per person); read from ``prior_views`` it is a filter of one narrow table.

``prior_views`` (type, ph, t, pv): one row per folded event that is not a view, with its type, person number, time
and its person's latest view at or before it (``pv``; NULL: none). Its own table, not a column of ``events``: an
UPDATE of millions of the copy's rows took 26 s for 800,000 of them under the first load's 256MB pool (DuckDB 1.5.6),
where these inserts append.

Kept exact under late and out-of-order rows by the fold (``fold``, with the KPI state's, same watermark, same
transaction): it adds the rows it folds, and computes again the later rows of each person that one of its views may
have become the latest view of. Between folds the query trusts the table only for persons with no view applied since
(``DIRTY``); their rows, the rows not folded yet, and the persons whose latest view lies after the range are joined
to the range's views as before. An erasure rewrites every row of its person under a new key (a new number, whose
rows are unfolded until the next fold): the old number's rows leave the table (``forget``).

The invariant the query relies on: for a person with no unfolded view, the table holds one row per folded event of
theirs that is not a view, with their latest view at or before it among the copy's rows. Persons are told by number
(``ph``): where two keys share one, the views of both count; but such a number is in ``hash_clashes`` from the fold
that met both keys on (person_hashes.py), and the funnels then group by the keys themselves, never reading this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import duckdb

# A fold or load computes at most about this many rows' latest views per statement: the first load's ASOF JOIN of
# every row would sort them all at once; buckets of persons (by number) bound that.
BUCKET_ROWS = 2_000_000

# The persons whose rows in the table may be stale: a view of theirs was applied after the last fold.
DIRTY = "SELECT DISTINCT ph FROM events WHERE applied > $folded AND type = 'view'"

# Each of the ``rows`` (type, ph, t) with its person's latest view at or before it, sorted so that a funnel's scan
# of one type and range skips most row groups by their min/max (at 10M: 43 -> 14 ms). (A CTE, not a temporary
# table: under DuckDB 1.5.6 an ASOF JOIN reading a temporary table made in the same transaction never returned.)
_INSERT = """
INSERT INTO prior_views
WITH prior_view_rows AS MATERIALIZED ({rows})
SELECT b.type, b.ph, b.t, a.t
FROM prior_view_rows b
ASOF LEFT JOIN (
    SELECT ph, occurred_us AS t FROM events
    WHERE type = 'view' AND {bucket} AND ph IN (SELECT ph FROM prior_view_rows)
) a ON a.ph = b.ph AND b.t >= a.t
ORDER BY b.type, b.t"""

# The persons with a view among the rows a fold of (folded, top] folds, each from their earliest such view on.
_TOUCHED = """
    SELECT ph, min(occurred_us) AS since FROM events
    WHERE type = 'view' AND applied > {folded} AND applied <= {top} AND {bucket} GROUP BY ph"""

# The rows whose latest view the fold computes: its own, and the folded rows of the touched persons from then on
# (whose rows in the table it deletes first).
_FOLDED = """
    SELECT e.type, e.ph, e.occurred_us AS t FROM events e
    WHERE e.type <> 'view' AND e.applied > {folded} AND e.applied <= {top} AND {bucket}
    UNION ALL
    SELECT e.type, e.ph, e.occurred_us FROM events e JOIN ({touched}) m ON m.ph = e.ph AND e.occurred_us >= m.since
    WHERE e.type <> 'view' AND e.applied <= {folded}"""


def create_state(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS prior_views (type VARCHAR, ph UBIGINT, t BIGINT, pv BIGINT)")


def fold(connection: duckdb.DuckDBPyConnection, folded: int, top: int, step: Callable[[], None] | None = None) -> None:
    """The rows applied in (``folded``, ``top``] into the table, and the later rows of the persons with a view among
    them computed again (in the caller's transaction; ``step`` called after each bucket of persons)."""
    fresh = int(connection.execute(  # type: ignore[index]
        "SELECT count(*) FROM events WHERE applied > ? AND applied <= ?", [folded, top]).fetchone()[0])
    buckets = max(1, -(-fresh // BUCKET_ROWS))
    for bucket in range(buckets):
        within = f"ph % {buckets} = {bucket}" if buckets > 1 else "TRUE"
        touched = _TOUCHED.format(folded=int(folded), top=int(top), bucket=within)
        if folded:
            connection.execute(f"DELETE FROM prior_views p USING ({touched}) m WHERE p.ph = m.ph AND p.t >= m.since")
        rows = _FOLDED.format(folded=int(folded), top=int(top), bucket=within, touched=touched)
        connection.execute(_INSERT.format(rows=rows, bucket=within))
        if step is not None and buckets > 1:
            step()


def forget(connection: duckdb.DuckDBPyConnection, revised: Sequence[str]) -> None:
    """An erasure: the rows of the numbers of these events (every row of their persons is rewritten under a new key)
    leave the table, before the events do."""
    connection.execute("DELETE FROM prior_views WHERE ph IN (SELECT ph FROM events WHERE event_id IN (SELECT unnest(?)))",
                       [list(revised)])


__all__: Sequence[str] = ("BUCKET_ROWS", "DIRTY", "create_state", "fold", "forget")
