"""Per row of the fact copy that is not a view, the time of its person's latest view at or before it (``events.pv``,
epoch micros; NULL when there is none): the first link of every person funnel that starts with a plain view.

A funnel's step 2 needs, for each of its events e, the latest start of a chain reaching it: the latest step-1
event in range at or before t(e) (funnels.py). When step 1 is every view (no filter), that is the person's latest
view at or before t(e) if it lies in range, and none when it lies before the range (every earlier view does too).
At 10M events the ASOF JOIN that finds it at query time was 447 of the 4-step funnel's 505 ms (2M carts against
6M views, sorted per person); read from the column it is a filter of the step-2 rows.

Kept exact under late and out-of-order rows by the fold (``fold``, with the KPI state's, same watermark, same
transaction): it sets ``pv`` for the rows it folds, and again for the later rows of each person that one of its
views may have become the latest view of. Between folds the query trusts ``pv`` only for folded rows of persons
with no view applied since (``DIRTY``); the others, and rows whose latest view lies after the range, are joined
to the range's views as before. An erasure rewrites every row of its person under a new key (a new number), so
the new rows are unfolded until the next fold, and no row of the old number is left but another key's.

The invariant the query relies on: every folded row of a person with no unfolded view holds, in ``pv``, its
person's latest view at or before it among the copy's rows. Persons are told by number (``ph``): where two keys
share one, the views of both count, and an erasure of one leaves the other's ``pv`` as it was; but such a number
is in ``hash_clashes`` from the fold that met both keys on (person_hashes.py), and the funnels then group by the
keys themselves, never reading ``pv``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import duckdb

# A fold or load sets ``pv`` for at most about this many rows per statement: the first load's ASOF JOIN of every
# row would sort them all at once (10M events: 614 MB resident, beyond the load's 256MB pool); buckets of persons
# (by number) bound that.
BUCKET_ROWS = 2_000_000

# The persons whose ``pv`` may be stale: a view of theirs was applied after the last fold.
DIRTY = "SELECT DISTINCT ph FROM events WHERE applied > $folded AND type = 'view'"

# Each row of prior_view_rows (rid, ph, t) gets its person's latest view at or before it.
_SET = """
UPDATE events SET pv = x.pv FROM (
    SELECT b.rid, a.t AS pv
    FROM prior_view_rows b
    ASOF LEFT JOIN (
        SELECT ph, occurred_us AS t FROM events
        WHERE type = 'view' AND {bucket} AND ph IN (SELECT ph FROM prior_view_rows)
    ) a ON a.ph = b.ph AND b.t >= a.t
) x WHERE events.rowid = x.rid"""

# The rows a fold of (folded, top] sets: its own rows, and the later rows of persons with a view among them.
_FOLDED = """
    SELECT e.rowid AS rid, e.ph, e.occurred_us AS t FROM events e
    WHERE e.type <> 'view' AND e.applied > {folded} AND e.applied <= {top} AND {bucket}
    UNION ALL
    SELECT e.rowid, e.ph, e.occurred_us FROM events e JOIN (
        SELECT ph, min(occurred_us) AS since FROM events
        WHERE type = 'view' AND applied > {folded} AND applied <= {top} AND {bucket} GROUP BY ph
    ) m ON m.ph = e.ph AND e.occurred_us >= m.since
    WHERE e.type <> 'view' AND e.applied <= {folded}"""


def fold(connection: duckdb.DuckDBPyConnection, folded: int, top: int, step: Callable[[], None] | None = None) -> None:
    """``pv`` for the rows applied in (``folded``, ``top``] and for the later rows of the persons with a view among
    them (in the caller's transaction; ``step`` called after each bucket of persons)."""
    fresh = int(connection.execute(  # type: ignore[index]
        "SELECT count(*) FROM events WHERE applied > ? AND applied <= ?", [folded, top]).fetchone()[0])
    buckets = max(1, -(-fresh // BUCKET_ROWS))
    for bucket in range(buckets):
        within = f"ph % {buckets} = {bucket}" if buckets > 1 else "TRUE"
        _set(connection, _FOLDED.format(folded=int(folded), top=int(top), bucket=within), within)
        if step is not None and buckets > 1:
            step()


def _set(connection: duckdb.DuckDBPyConnection, rows: str, bucket: str) -> None:
    """``pv`` for the ``rows`` (rid, ph, t), from the views of their persons in ``bucket``."""
    connection.execute(f"CREATE OR REPLACE TEMP TABLE prior_view_rows AS {rows}")
    connection.execute(_SET.format(bucket=bucket))
    connection.execute("DROP TABLE prior_view_rows")


__all__: Sequence[str] = ("BUCKET_ROWS", "DIRTY", "fold")
