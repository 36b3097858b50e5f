"""SPEC.md "Funnel" for person funnels kept per day of their step-1 events, folded in the fact copy with the KPI
state: a funnel's answer over a month without following every chain of the month at each query.

A person's level over a range is the largest over its step-1 events in range, and each step-1 event e1's chains
lie in [t(e1), t(e1) + W]. So per registered definition (``funnel_windows``: its ``funnels.window_key``) and per
day of the KPI state's zone, the fold keeps what the chains starting at each person's step-1 events of that day
reach, over the folded rows (``funnels.window_chains``):

- ``funnel_window_bits``: per (day, j) the ids (``person_ids``) of the persons whose chains from that day reach
  level >= j, as a bitstring of the KPI state's capacity (padded with ``presence`` when it grows);
- ``funnel_window_rows``: per (day, person) the level, the latest start of a chain reaching it (in_progress), and,
  for a complete chain, the fastest conversion and the earliest completion with its order and amount.

Which days a query may read (``funnels._windows_result``): the whole days of its range whose windows closed by
as_of (day end + W <= as_of): their chains are the same for every later as_of (an order's counting event is its
earliest completed one overall, the same at every as_of that holds it); and, when few events lie after as_of, the
later days too, for the persons without an event after as_of (the fold saw no event of theirs that the answer does
not). Persons whose rows the state may not reflect are recomputed from the rows over the whole range and masked out
of the state: those with rows not folded yet (late events, an erasure's rewritten rows), and those of an order with
a completed event not folded yet. The step-1 events outside the days read are followed from the rows (the usual
chain SQL, ``funnels._query``), and both are combined per person id.

A fold recomputes, for every registered definition, the persons its rows touch (theirs, and those of a folded
completed event of an order the rows complete again: it may take the order's counting event from them) in the days
whose windows reach the earliest of those rows (day end + W > t), then those days' bitstrings from their rows. An
erasure keeps each person's id (``kpi_state.rename_persons``) and renames the person's number in the state
(``rename``), so the person is masked until their rewritten rows are folded again, then recomputed. A definition
is registered (built over every folded row) when a funnel is defined or first asked for (``FactMirror.want_funnel``,
``build_funnel``; until then the usual path answers) and dropped when its funnel is deleted; a change of the
reporting zone rebuilds every definition's days (``rebuild``). Breakdowns, unit = product and category filters keep
the usual path.
"""

from __future__ import annotations

import json
import re

import duckdb

from services.funnel.domain.funnels import FunnelDefinition, FunnelStep
from services.funnel.engine import funnels, kpi_state, person_hashes

_TABLES = ("funnel_window_rows", "funnel_window_bits")
# Days of rows folded into bitstrings by one statement (as kpi_state's presence: a bitstring of the capacity per
# (day, level) while aggregated).
_FOLD_DAYS = 7


def create_state(connection: duckdb.DuckDBPyConnection) -> None:
    # fnum: the definition's number in the state's tables; fid: funnels.window_key.
    connection.execute("CREATE TABLE IF NOT EXISTS funnel_windows (fnum INTEGER, fid VARCHAR, definition VARCHAR)")
    connection.execute("CREATE TABLE IF NOT EXISTS funnel_window_bits (fnum INTEGER, day_start BIGINT, "
                       "day_end BIGINT, level INTEGER, bits BIT)")
    # ph: the person's number (person_hashes.py; renamed with the person by an erasure); cents: the completing
    # order's amount (one order's: 64 bits hold it, as order_state's).
    connection.execute("CREATE TABLE IF NOT EXISTS funnel_window_rows (fnum INTEGER, day_start BIGINT, day_end BIGINT, "
                       "ph UBIGINT, id BIGINT, level INTEGER, s BIGINT, fast BIGINT, done BIGINT, eid VARCHAR, "
                       "cents BIGINT)")


def clear(connection: duckdb.DuckDBPyConnection) -> None:
    """No definition kept (the copy starts over: the mirror registers the wanted ones again)."""
    for table in (*_TABLES, "funnel_windows"):
        connection.execute(f"DELETE FROM {table}")


def registered(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(connection.execute("SELECT fid, fnum FROM funnel_windows").fetchall())


def register(connection: duckdb.DuckDBPyConnection, definition: FunnelDefinition) -> None:
    """The definition's days built over every folded row (inside the caller's transaction)."""
    key = funnels.window_key(definition)
    if key in registered(connection):
        return
    number = int(connection.execute("SELECT coalesce(max(fnum), 0) + 1 FROM funnel_windows").fetchone()[0])  # type: ignore[index]
    body = {"steps": [[step.type, step.product_id, step.source] for step in definition.steps],
            "window": definition.window_seconds}
    connection.execute("INSERT INTO funnel_windows VALUES (?, ?, ?)", [number, key, json.dumps(body)])
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    _build(connection, number, _definition(connection, number), None, folded)


def drop(connection: duckdb.DuckDBPyConnection, definition: FunnelDefinition) -> None:
    number = registered(connection).get(funnels.window_key(definition))
    if number is not None:
        for table in (*_TABLES, "funnel_windows"):
            connection.execute(f"DELETE FROM {table} WHERE fnum = ?", [number])


# The persons whose chains rows applied in ($folded, $top] may change: theirs, and those of a folded completed event of
# an order that one of them completes (it may take the order's counting event from them).
_TOUCHED = """
    SELECT ph FROM events WHERE applied > $folded AND applied <= $top
    UNION
    SELECT ph FROM order_events
    WHERE order_status = 'completed' AND applied <= $top AND order_id IN (
        SELECT order_id FROM order_events WHERE applied > $folded AND applied <= $top AND order_status = 'completed')"""


def fold(connection: duckdb.DuckDBPyConnection, folded: int, top: int) -> None:
    """The days reached by the rows applied after ``folded`` up to ``top`` recomputed, for the persons those rows
    touch, for every registered definition (after the KPI state's fold: their persons have ids)."""
    numbers = list(registered(connection).values())
    if not numbers:
        return
    earliest = connection.execute("SELECT min(occurred_us) FROM events WHERE applied > ? AND applied <= ?",
                                  [folded, top]).fetchone()[0]  # type: ignore[index]
    if earliest is None:
        return
    for number in numbers:
        definition = _definition(connection, number)
        _build(connection, number, definition, int(earliest) - definition.window_seconds * 1_000_000, top, folded)


def rebuild(connection: duckdb.DuckDBPyConnection) -> None:
    """Every definition's days refolded (the reporting zone changed)."""
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    for number in registered(connection).values():
        _build(connection, number, _definition(connection, number), None, folded)


def rename(connection: duckdb.DuckDBPyConnection, renamed: dict[str, str]) -> None:
    """An erasure's new keys (old key -> pseudonym): the persons' rows of the state take the new key's number (their
    rows come back under it, and are masked by it until folded again)."""
    if not renamed:
        return
    old, new = (person_hashes.NUMBER.replace("person_key", f"r.{name}") for name in ("old", "new"))
    connection.execute(f"""
        UPDATE funnel_window_rows SET ph = {new}
        FROM (SELECT unnest(?) AS old, unnest(?) AS new) r WHERE funnel_window_rows.ph = {old}""",
                       [list(renamed), list(renamed.values())])


def _definition(connection: duckdb.DuckDBPyConnection, number: int) -> FunnelDefinition:
    body = json.loads(connection.execute("SELECT definition FROM funnel_windows WHERE fnum = ?", [number])
                      .fetchone()[0])  # type: ignore[index]
    steps = tuple(FunnelStep(kind, product_id=product, source=source) for kind, product, source in body["steps"])
    return FunnelDefinition("state", steps, window_seconds=body["window"])


def _build(connection: duckdb.DuckDBPyConnection, number: int, definition: FunnelDefinition, since: int | None,
           top: int, folded: int | None = None) -> None:
    """The days of definition ``number`` whose chains reach ``since`` or later (day end > since; every day when None)
    computed again from the rows applied up to ``top``: for every person, or, given ``folded``, for those the rows
    applied after it touch (``_TOUCHED``); then those days' bitstrings from their rows."""
    low, high = connection.execute("SELECT min(occurred_us), max(occurred_us) FROM events WHERE applied <= ?",
                                   [top]).fetchone()  # type: ignore[misc]
    if since is None:
        since = -1 if low is None else int(low) - 1
    bounds: dict[str, object] = {"fnum": number, "since": since, "top": top}
    persons = None
    if folded is not None:
        persons, bounds["folded"] = _TOUCHED, folded
    chosen = " AND ph IN (SELECT ph FROM touched)" if persons else ""
    touched = f"WITH touched AS ({persons}) " if persons else ""
    connection.execute(f"{touched}DELETE FROM funnel_window_rows WHERE fnum = $fnum AND day_end > $since{chosen}",
                       {name: bounds[name] for name in ("fnum", "since", *(("top", "folded") if persons else ()))})
    connection.execute("DELETE FROM funnel_window_bits WHERE fnum = ? AND day_end > ?", [number, since])
    if high is None or int(high) <= since:
        return
    starts = funnels.window_days(max(since, int(low)), int(high), kpi_state.time_zone_of(connection))
    # From the day holding ``since`` (its end is after it).
    first = max(index for index, start in enumerate(starts) if start <= max(since, starts[0]))
    starts = starts[first:]
    sql, params = funnels.window_chains(definition, starts, persons)
    params.update(bounds, start=starts[0], window=definition.window_seconds * 1_000_000)
    used = set(re.findall(r"\$(\w+)", sql))  # DuckDB refuses parameters a statement does not use
    connection.execute(f"INSERT INTO funnel_window_rows SELECT $fnum AS fnum, * FROM ({sql})",
                       {"fnum": number, **{name: value for name, value in params.items() if name in used}})
    capacity = int(connection.execute("SELECT capacity FROM kpi_state").fetchone()[0])  # type: ignore[index]
    for index in range(0, len(starts) - 1, _FOLD_DAYS):
        connection.execute(f"""
            INSERT INTO funnel_window_bits
            SELECT r.fnum, r.day_start, any_value(r.day_end), v.level, bitstring_agg(r.id, 0, {capacity - 1})
            FROM funnel_window_rows r JOIN range(1, {len(definition.steps) + 1}) v(level) ON r.level >= v.level
            WHERE r.fnum = ? AND r.day_start >= ? AND r.day_start < ?
            GROUP BY r.fnum, r.day_start, v.level""",
            [number, starts[index], starts[min(index + _FOLD_DAYS, len(starts) - 1)]])


__all__ = ("clear", "create_state", "drop", "fold", "rebuild", "register", "registered", "rename")
