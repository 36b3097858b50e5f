"""SPEC.md "Daily and range KPIs": distinct persons per day, each order's counting event, the refunds and the
inquiries, kept folded in the fact copy by integer keys.

The compiled form, kept up to date as rows arrive, of the parts of ``kpis.py``'s plain SQL that cost most over a
month of events (at 10M events: the three distinct counts about half, the order rule most of the rest, then the
joins on person and order keys, which are strings):

- ``uv``, ``cart_users``, ``inquiry_users``: distinct persons with a view / cart / inquiry in a span. Every person
  of those events and of completed orders gets a dense integer id (``person_ids``, filled as rows are folded), and
  ``presence`` holds, per calendar day of the reporting time zone and event type, the set of their ids as a
  bitstring of ``capacity`` bits (DuckDB ``bitstring_agg``). The distinct persons of whole days are the
  ``bit_count`` of the ``bit_or`` of their bitstrings; the rest of a span (a part of a day at either end, the day
  holding as_of, rows not folded yet) is read from the rows and joined in by id, a person without an id yet
  counted by key (such a person is in no bitstring). Exact: a set union, never an estimate. The viewers of each
  (day, channel source), for the channels' uv per source (channels.py), are a bitstring the same way in
  ``source_presence`` when they are many (``sparse_limit``), else their ids as rows of ``source_viewers``: a shop's
  long tail of sources costs what its viewers do, not a bitstring of every person per source and day;
- the order rule (``History.orders``): an order counts once, at its earliest completed event (ties by
  event_id) up to as_of; ``counted_orders`` is its compiled form over the state, which the KPIs, products, matrix
  and channels read. ``order_state`` holds, per order_id, that earliest completed event over the folded rows
  (event_id, person key and id, time, amount: the total, else the sum of its lines), the order's earliest refund
  and a dense number. The earliest event up to any as_of is the earliest of all when that is <= as_of, and none
  otherwise, so the state answers every as_of; a query takes the earliest of the state and the completed events
  not folded yet when there are some;
- ``refund_state``: every folded refund event with its order's number, so refunds join their order by integer;
  ``inquiry_state``: every folded inquiry by its person's id, so "inquiry followed by an order within 7 days"
  joins by integer.

Bitstrings and minima are a union and a min: folding them is associative and idempotent; the refund and inquiry
rows are a list of folded rows. A query reads the state with the rows not in it (``applied`` after
``copy_state.folded``: a few row groups, which the zone maps of ``applied`` find) and gets the answer over all rows;
where some rows are not folded, the part they touch is computed by key from the rows (``kpis.py`` asks first):

- late and out-of-order events are more rows: they are read beside the state until folded into their own day;
- an erasure rewrites a person's rows under one pseudonym with every other field unchanged; the copy renames the
  person in ``person_ids`` and ``order_state`` (``rename_persons``, in the transaction that replaces the rows),
  so the person keeps their id and the old key leaves the file; the rewritten refunds leave ``refund_state``
  (``forget_refunds``: they are folded again as new rows; a bitstring, a minimum or a second copy of an inquiry
  does not mind a row folded twice);
- days are those of the reporting time zone the state was folded in (``kpi_state.time_zone``); the copy refolds
  ``presence`` from its rows when the setting changes (``rebuild_presence``). A query uses a day's bitstring
  only where the whole day lies inside the span and at or before as_of, whatever zone the answer's days are in.

The hypothesis test of the KPIs (tests/unit/funnel/test_engine_kpis.py) builds the copy in random batches folded
at random points, with an erasure, in several zones, and compares with the domain; tests/integration/funnel/
test_mirror.py checks the state equals a fold from scratch after load, follow and erasure on both databases.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb

from libs.common.events import epoch_micros
from services.funnel.engine.facts import first_completed

# The event types whose distinct persons the KPIs count.
PRESENCE_TYPES = ("view", "add_to_cart", "inquiry")
_TYPES = ", ".join(f"'{name}'" for name in PRESENCE_TYPES)
_DAY_US = 86_400_000_000
# The fewest bits a day's set has; it doubles when the persons outgrow it (every bitstring is padded).
MIN_CAPACITY = 1 << 16


def create_state(connection: duckdb.DuckDBPyConnection, time_zone: str = "UTC") -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS person_ids (person_key VARCHAR, id BIGINT)")
    connection.execute("CREATE TABLE IF NOT EXISTS presence (day_start BIGINT, type VARCHAR, bits BIT)")
    # The viewers of each (day, channel source), the channels' uv per source: a bitstring for a source with many
    # viewers that day (source_presence), their ids as rows for one with few (source_viewers); see ``sparse_limit``.
    connection.execute("CREATE TABLE IF NOT EXISTS source_presence (day_start BIGINT, source VARCHAR, bits BIT)")
    connection.execute("CREATE TABLE IF NOT EXISTS source_viewers (day_start BIGINT, source VARCHAR, id BIGINT)")
    # amount: one order's, which fits 64 bits (a total, or lines of at most 10^14 cents each in a 32 KB event);
    # sums of it are taken as HUGEINT. (A HUGEINT column scans ~50x slower: its bit-packing.)
    # Per order_id: its earliest completed event (NULLs while only refunds are known) with the person's id, and its
    # earliest refund.
    # num: the order's number (dense, for refund_state).
    connection.execute("CREATE TABLE IF NOT EXISTS order_state (order_id VARCHAR, event_id VARCHAR, "
                       "person_key VARCHAR, person_id BIGINT, occurred_us BIGINT, amount BIGINT, refund_us BIGINT, "
                       "num BIGINT)")
    # Every folded refund event with its order's number: summed per span; an erasure's rows leave it before they are
    # folded again (``forget_refunds``).
    connection.execute("CREATE TABLE IF NOT EXISTS refund_state (event_id VARCHAR, occurred_us BIGINT, "
                       "refund_cents BIGINT, order_num BIGINT)")
    # Every folded inquiry, by person id (an erasure's rows folded again add copies, which change no count).
    connection.execute("CREATE TABLE IF NOT EXISTS inquiry_state (occurred_us BIGINT, person_id BIGINT)")
    # persons: ids given (0 .. persons - 1); capacity: the bits of every bitstring of presence.
    connection.execute("CREATE TABLE IF NOT EXISTS kpi_state (time_zone VARCHAR, persons BIGINT, capacity BIGINT)")
    if connection.execute("SELECT count(*) FROM kpi_state").fetchone()[0] == 0:  # type: ignore[index]
        connection.execute("INSERT INTO kpi_state VALUES (?, 0, ?)", [time_zone, MIN_CAPACITY])


def time_zone_of(connection: duckdb.DuckDBPyConnection) -> str:
    return str(connection.execute("SELECT time_zone FROM kpi_state").fetchone()[0])  # type: ignore[index]


def _start_of(day: date, zone: ZoneInfo) -> int:
    return epoch_micros(datetime.combine(day, time(), zone).astimezone(UTC))


def day_starts(low_us: int, high_us: int, time_zone: str) -> list[int]:
    """The starts of the zone's days from the one holding ``low_us`` to the one after ``high_us``'s."""
    zone = ZoneInfo(time_zone)
    first = datetime.fromtimestamp(low_us / 1e6, UTC).astimezone(zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(high_us / 1e6, UTC).astimezone(zone).date() + timedelta(days=2)
    return [_start_of(first + timedelta(days=n), zone) for n in range((last - first).days + 1)]


def day_of(column: str, starts: list[int]) -> str:
    """SQL: the start of the day (one of ``starts``, sorted) holding the time ``column``. A day is 24 hours give or
    take a clock change of a few hours, so the arithmetic guess is right or one off, and a comparison each way
    settles it (as kpis.py's buckets)."""
    listed = "[" + ", ".join(str(int(start)) for start in starts) + "]"
    guess = f"greatest(least(({column} - {int(starts[0])}) // {_DAY_US}, {len(starts) - 2}), 0)"
    index = (f"({guess} - ({column} < list_extract({listed}, {guess} + 1))::INTEGER"
             f" + ({column} >= list_extract({listed}, {guess} + 2))::INTEGER)")
    return f"list_extract({listed}, {index} + 1)"


# SQL over rows ``l`` (with person_key) LEFT JOINed to ``person_ids i``: the ids of their persons as a set of
# ``$last_id + 1`` bits, and how many distinct persons have no id yet (in no day's set).
ROW_PERSONS = ("bitstring_agg(i.id, 0, $last_id) FILTER (WHERE i.id IS NOT NULL) AS bits,\n"
               "           count(DISTINCT l.person_key) FILTER (WHERE i.id IS NULL) AS newcomers")
# SQL: the distinct persons of the day sets' union ``k.bits`` and the rows' ``u`` (ROW_PERSONS), either side missing.
UNION_COUNT = ("coalesce(bit_count(CASE WHEN k.bits IS NULL THEN u.bits WHEN u.bits IS NULL THEN k.bits\n"
               "                                   ELSE k.bits | u.bits END), 0) + coalesce(u.newcomers, 0)")


def _fold_persons(connection: duckdb.DuckDBPyConnection, where: str) -> int:
    """Ids for the persons of the rows meeting ``where`` who have none; the capacity grown to hold them. Returns
    the capacity."""
    persons, capacity = connection.execute("SELECT persons, capacity FROM kpi_state").fetchone()  # type: ignore[misc]
    connection.execute(f"""
        INSERT INTO person_ids
        SELECT n.person_key, {int(persons)} + row_number() OVER () - 1
        FROM (SELECT DISTINCT person_key FROM events e
              WHERE {where} AND (e.type IN ({_TYPES}) OR e.order_status = 'completed')) n
        ANTI JOIN person_ids p ON p.person_key = n.person_key""")
    persons = connection.execute("SELECT count(*) FROM person_ids").fetchone()[0]  # type: ignore[index]
    if persons > capacity:
        grown = max(MIN_CAPACITY, 1 << (persons + persons // 4 - 1).bit_length())
        for table in ("presence", "source_presence"):
            connection.execute(f"UPDATE {table} SET bits = bits || bitstring('0', ?)", [grown - capacity])
        capacity = grown
    connection.execute("UPDATE kpi_state SET persons = ?, capacity = ?", [persons, capacity])
    return int(capacity)


# The bitstrings one statement of a fold may hold while it aggregates (groups x capacity bits): as many days per
# statement as fit. At 30M events (3M persons: 512 KB per bitstring, a dozen groups a day) about a week, as a fixed
# seven days were; at 40,000 persons (8 KB) a year and more in one statement instead of a statement per week, whose
# fixed cost (a scan of the rows, the join, a temporary table and two merges, ~30 ms) was most of a fold: 21-25 us
# of the funnel consumer's CPU per event with events over 400 days (docs/funnel.md, branch consumer-throughput).
FOLD_BYTES = 48 << 20


def sparse_limit(capacity: int) -> int:
    """The most viewers a (day, source) keeps as id rows in ``source_viewers``; more make it a bitstring of
    ``capacity`` bits in ``source_presence``. A bitstring costs ``capacity / 8`` bytes whatever its viewers, an id
    row ~3–4 bytes on disk (bit-packed ids; day and source compress to nothing) and a hash of it in a query, where a
    bitstring is an ``or`` of its bytes: at a 256th of the capacity a bitstring costs at most 32 bytes per viewer
    (so the state grows with the viewers, whatever the sources), and the bench's six sources, thousands of viewers a
    day each, stay bitstrings (a 32nd made them rows: the channels query ~2x slower at 3M events, load 5–8)."""
    return capacity // 256


def _fold_presence(connection: duckdb.DuckDBPyConnection, where: str, capacity: int,
                   step: Callable[[], None] = lambda: None, fold_bytes: int | None = None) -> None:
    """The persons of the rows meeting ``where`` added to their (day, type) bitstrings, and those of views to their
    (day, channel source) viewers: or-ed into the bitstring of a (day, source) that has one, else added as id rows,
    and the id rows of a (day, source) that then holds more than ``sparse_limit`` made a bitstring. ``fold_bytes``:
    the bitstrings one statement may hold (``FOLD_BYTES`` when None)."""
    low, high, sources = connection.execute(
        f"SELECT min(occurred_us), max(occurred_us), count(DISTINCT source) FILTER (WHERE e.type = 'view') "
        f"FROM events e WHERE {where} AND e.type IN ({_TYPES})").fetchone()  # type: ignore[misc]
    if low is None:
        return
    starts = day_starts(int(low), int(high), time_zone_of(connection))
    # Some days at a time: every (day, type) group, and every (day, source) kept as a bitstring, holds a bitstring of
    # ``capacity`` bits while it is aggregated, and all of a first load's groups at once (90 days x the sources x
    # 512 KB at 3M persons, when every (day, source) was a bitstring) passed the copy's memory limit (an
    # OutOfMemoryException at 30M events). The rows' sources bound the (day, source)s kept as bitstrings.
    day_bytes = max(1, (len(PRESENCE_TYPES) + int(sources)) * capacity // 8)
    per_statement = max(1, (fold_bytes or FOLD_BYTES) // day_bytes)
    last = len(starts) - 1
    for first in range(0, last, per_statement):
        since, until = starts[first], starts[min(first + per_statement, last)]
        rows = f"""
            FROM events e JOIN person_ids p ON p.person_key = e.person_key
            WHERE {where} AND e.occurred_us >= {int(since)} AND e.occurred_us < {int(until)}"""
        connection.execute(f"""
            CREATE OR REPLACE TEMP TABLE presence_fold AS
            SELECT {day_of('e.occurred_us', starts)} AS day_start, e.type, bitstring_agg(p.id, 0, {capacity - 1}) AS bits
            {rows} AND e.type IN ({_TYPES}) GROUP BY ALL""")
        _merge(connection, "presence", "type", "presence_fold")
        connection.execute(f"""
            CREATE OR REPLACE TEMP TABLE viewers_fold AS
            SELECT DISTINCT {day_of('e.occurred_us', starts)} AS day_start, e.source, p.id
            {rows} AND e.type = 'view'""")
        # The state of the chunk's days only: a join builds its hash table of the whole right side.
        days = f"day_start >= {int(since)} AND day_start < {int(until)}"
        kept = f"SELECT day_start, source FROM source_presence WHERE {days}"
        # Into the bitstrings of the (day, source)s that have one.
        connection.execute(f"""
            UPDATE source_presence SET bits = source_presence.bits | f.bits
            FROM (SELECT day_start, source, bitstring_agg(id, 0, {capacity - 1}) AS bits
                  FROM viewers_fold SEMI JOIN ({kept}) k USING (day_start, source) GROUP BY ALL) f
            WHERE source_presence.day_start = f.day_start AND source_presence.source = f.source""")
        # The others: those that would then hold more than ``sparse_limit`` ids made a bitstring of their rows and
        # the new ids, the rest's new ids added as rows. (Adding the ids first and making bitstrings of them after
        # wrote millions of rows a first load then deleted.)
        fresh = f"SELECT * FROM viewers_fold ANTI JOIN ({kept}) k USING (day_start, source)"
        connection.execute(f"""
            CREATE OR REPLACE TEMP TABLE viewers_grown AS
            SELECT day_start, source FROM (
                {fresh} UNION SELECT day_start, source, id FROM source_viewers WHERE {days}
            ) GROUP BY ALL HAVING count(*) > {int(sparse_limit(capacity))}""")
        connection.execute(f"""
            INSERT INTO source_presence
            SELECT day_start, source, bitstring_agg(id, 0, {capacity - 1}) FROM (
                SELECT * FROM ({fresh}) SEMI JOIN viewers_grown USING (day_start, source)
                UNION ALL
                SELECT day_start, source, id FROM source_viewers SEMI JOIN viewers_grown USING (day_start, source)
                WHERE {days}
            ) GROUP BY ALL""")
        connection.execute(f"""
            INSERT INTO source_viewers
            SELECT f.* FROM ({fresh}) f ANTI JOIN viewers_grown USING (day_start, source)
            ANTI JOIN (SELECT * FROM source_viewers WHERE {days}) v USING (day_start, source, id)""")
        connection.execute("""
            DELETE FROM source_viewers USING viewers_grown g
            WHERE source_viewers.day_start = g.day_start AND source_viewers.source = g.source""")
        for table in ("presence_fold", "viewers_fold", "viewers_grown"):
            connection.execute(f"DROP TABLE {table}")
        step()


def _merge(connection: duckdb.DuckDBPyConnection, table: str, kind: str, folded: str) -> None:
    """Bitstrings (day_start, ``kind``, bits) of the table ``folded`` or-ed into ``table``'s, or added to it."""
    connection.execute(f"""
        UPDATE {table} SET bits = {table}.bits | f.bits FROM {folded} f
        WHERE {table}.day_start = f.day_start AND {table}.{kind} = f.{kind}""")
    connection.execute(f"""
        INSERT INTO {table} SELECT f.* FROM {folded} f
        ANTI JOIN {table} p ON p.day_start = f.day_start AND p.{kind} = f.{kind}""")


def counting_events(where: str) -> str:
    """SQL: per order, its earliest completed event among the order events meeting ``where`` (ties by event_id):
    (order_id, event_id, person_key, occurred_us, amount), amount the total, else the sum of its lines."""
    return f"""
    WITH firsts AS (
        {first_completed("e.order_id, e.event_id, e.person_key, e.occurred_us, e.total_cents", where)}
    ),
    lines AS (
        SELECT i.event_id, sum(i.quantity::HUGEINT * i.unit_price_cents) AS cents
        FROM order_items i SEMI JOIN firsts f ON i.event_id = f.event_id AND f.total_cents IS NULL
        GROUP BY i.event_id
    )
    SELECT f.order_id, f.event_id, f.person_key, f.occurred_us, coalesce(f.total_cents::HUGEINT, l.cents, 0) AS amount
    FROM firsts f LEFT JOIN lines l ON l.event_id = f.event_id"""


def counted_orders(folded: int | None) -> str:
    """CTE ``counted``: each order's counting event over every row (``History.orders``), from ``order_state`` and,
    given ``folded`` (the state's watermark; None when no completed order event is applied after it), the completed
    events not folded yet: per order the earliest of both. Columns order_id, event_id, person_key, person_id (NULL
    for orders the unfolded rows touch), occurred_us (NULL while only refunds are known), amount, refund_us (the
    earliest folded refund). The earliest event of all is the counting one at every as_of at or after it, and no
    event counts before it: a reader keeps ``occurred_us <= $as_of``."""
    if folded is None:
        return """counted AS NOT MATERIALIZED (
    SELECT order_id, event_id, person_key, person_id, occurred_us, amount, refund_us FROM order_state
)"""
    return f"""fresh_orders AS (
    SELECT order_id FROM order_events
    WHERE applied > {int(folded)} AND order_status = 'completed' AND order_id IS NOT NULL
),
refolded AS (
    SELECT order_id, event_id, person_key, occurred_us, amount, refund_us
    FROM order_state SEMI JOIN fresh_orders USING (order_id)
    UNION ALL
    SELECT *, NULL AS refund_us FROM ({counting_events(f"e.applied > {int(folded)}")})
),
counted AS NOT MATERIALIZED (
    SELECT order_id, event_id, person_key, person_id, occurred_us, amount, refund_us
    FROM order_state ANTI JOIN fresh_orders USING (order_id)
    UNION ALL
    SELECT order_id, event_id, person_key, NULL AS person_id, occurred_us, amount,
           min(refund_us) OVER (PARTITION BY order_id) AS refund_us
    FROM refolded
    QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY occurred_us, event_id) = 1
)"""


def unfolded_completed(cursor: duckdb.DuckDBPyConnection, folded: int) -> bool:
    """Whether a completed order event is applied after ``folded`` (``counted_orders`` then reads the rows too)."""
    return bool(cursor.execute("SELECT count(*) FROM order_events WHERE applied > ? AND order_status = 'completed'",
                               [folded]).fetchone()[0])  # type: ignore[index]


def _fold_orders(connection: duckdb.DuckDBPyConnection, where: str) -> None:
    """The earliest completed event and the earliest refund of each order, and the inquiries, of the rows meeting
    ``where`` folded in (after ``_fold_persons``: every person of a completed order or an inquiry has an id)."""
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE order_fold AS
        WITH counting AS ({counting_events(where)}),
        refunds AS (
            SELECT e.order_id, min(e.occurred_us) AS refund_us FROM order_events e
            WHERE {where} AND e.order_status = 'refunded' AND e.order_id IS NOT NULL GROUP BY e.order_id
        )
        SELECT order_id, c.event_id, c.person_key, p.id AS person_id, c.occurred_us, c.amount, r.refund_us
        FROM counting c FULL JOIN refunds r USING (order_id) LEFT JOIN person_ids p ON p.person_key = c.person_key""")
    connection.execute("""
        UPDATE order_state SET event_id = f.event_id, person_key = f.person_key, person_id = f.person_id,
                               occurred_us = f.occurred_us, amount = f.amount
        FROM order_fold f
        WHERE order_state.order_id = f.order_id AND f.occurred_us IS NOT NULL
          AND (order_state.occurred_us IS NULL OR f.occurred_us < order_state.occurred_us
               OR (f.occurred_us = order_state.occurred_us AND f.event_id < order_state.event_id))""")
    connection.execute("""
        UPDATE order_state SET refund_us = f.refund_us FROM order_fold f
        WHERE order_state.order_id = f.order_id AND f.refund_us IS NOT NULL
          AND (order_state.refund_us IS NULL OR f.refund_us < order_state.refund_us)""")
    numbered = connection.execute("SELECT count(*) FROM order_state").fetchone()[0]  # type: ignore[index]
    connection.execute(f"""
        INSERT INTO order_state
        SELECT f.*, {int(numbered)} + row_number() OVER () - 1 FROM order_fold f ANTI JOIN order_state s USING (order_id)""")
    connection.execute("DROP TABLE order_fold")
    connection.execute(f"""
        INSERT INTO refund_state
        SELECT e.event_id, e.occurred_us, e.refund_cents, s.num FROM order_events e JOIN order_state s USING (order_id)
        WHERE {where} AND e.order_status = 'refunded' ORDER BY e.occurred_us""")
    connection.execute(f"""
        INSERT INTO inquiry_state
        SELECT e.occurred_us, p.id FROM events e JOIN person_ids p ON p.person_key = e.person_key
        WHERE {where} AND e.type = 'inquiry' ORDER BY e.occurred_us""")


def fold(connection: duckdb.DuckDBPyConnection, top: int, step: Callable[[], None] | None = None,
         fold_bytes: int | None = None) -> None:
    """Fold the rows applied after ``copy_state.folded`` up to ``top`` into the KPI state (inside the caller's
    transaction; product_state.fold then moves ``folded``); ``step`` called after each part (mirror.fold_state);
    ``fold_bytes``: the presence fold's budget per statement (``FOLD_BYTES`` when None)."""
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    where = f"e.applied > {folded} AND e.applied <= {int(top)}"
    step = step or (lambda: None)
    capacity = _fold_persons(connection, where)
    step()
    _fold_presence(connection, where, capacity, step, fold_bytes)
    _fold_orders(connection, where)
    step()


def rebuild_presence(connection: duckdb.DuckDBPyConnection, time_zone: str) -> None:
    """``presence`` refolded from every folded row in the days of ``time_zone`` (the setting changed)."""
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    for table in ("presence", "source_presence", "source_viewers"):
        connection.execute(f"DELETE FROM {table}")
    connection.execute("UPDATE kpi_state SET time_zone = ?", [time_zone])
    capacity = int(connection.execute("SELECT capacity FROM kpi_state").fetchone()[0])  # type: ignore[index]
    _fold_presence(connection, f"e.applied <= {folded}", capacity)


def rename_persons(connection: duckdb.DuckDBPyConnection, renamed: dict[str, str]) -> None:
    """An erasure's new keys (old key -> pseudonym) in the state, before its rows are replaced: the person keeps
    their id and their orders, under the new key only."""
    if not renamed:
        return
    old, new = list(renamed), list(renamed.values())
    for table in ("person_ids", "order_state"):
        connection.execute(f"""
            UPDATE {table} SET person_key = r.new
            FROM (SELECT unnest(?) AS old, unnest(?) AS new) r WHERE {table}.person_key = r.old""", [old, new])


def forget_refunds(connection: duckdb.DuckDBPyConnection, revised: list[str]) -> None:
    """Folded refund events an erasure rewrote leave refund_state (their new rows are folded as new ones)."""
    connection.execute("DELETE FROM refund_state WHERE event_id IN (SELECT unnest(?))", [revised])


def standing(cursor: duckdb.DuckDBPyConnection) -> tuple[int, int, str]:
    """(folded, capacity, time zone) of the state, within one ``product_state.snapshot`` with the query."""
    folded = cursor.execute("SELECT folded FROM copy_state").fetchone()[0]  # type: ignore[index]
    capacity, time_zone = cursor.execute("SELECT capacity, time_zone FROM kpi_state").fetchone()  # type: ignore[misc]
    return int(folded), int(capacity), str(time_zone)


__all__ = ("PRESENCE_TYPES", "ROW_PERSONS", "UNION_COUNT", "counted_orders", "counting_events", "create_state", "day_of",
           "day_starts", "fold", "rebuild_presence", "rename_persons", "standing", "unfolded_completed")
