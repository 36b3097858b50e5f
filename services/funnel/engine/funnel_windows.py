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

A fold recomputes, for every registered definition, the days whose windows reach the earliest newly folded event
(t >= day start and t <= day end + W): with events arriving in time order, the last W of days. An erasure keeps
each person's id (``kpi_state.rename_persons``), so the state stays right; its rewritten rows are folded again and
their days recomputed. A definition is registered (built over every folded row) when the copy is asked for it
(``FactMirror.want_funnel``; until then the usual path answers) and dropped when its funnel is deleted; a change
of the reporting zone rebuilds every definition's days (``rebuild``).
"""

from __future__ import annotations

import json
import re

import duckdb

from services.funnel.domain.funnels import FunnelDefinition, FunnelStep
from services.funnel.engine import funnels, kpi_state

_TABLES = ("funnel_window_rows", "funnel_window_bits")
# Days of rows folded into bitstrings by one statement (as kpi_state's presence: a bitstring of the capacity per
# (day, level) while aggregated).
_FOLD_DAYS = 7


def create_state(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS funnel_windows (fid VARCHAR, definition VARCHAR)")
    connection.execute("CREATE TABLE IF NOT EXISTS funnel_window_bits (fid VARCHAR, day_start BIGINT, "
                       "day_end BIGINT, level INTEGER, bits BIT)")
    # cents: the completing order's amount (one order's: 64 bits hold it, as order_state's).
    connection.execute("CREATE TABLE IF NOT EXISTS funnel_window_rows (fid VARCHAR, day_start BIGINT, day_end BIGINT, "
                       "id BIGINT, level INTEGER, s BIGINT, fast BIGINT, done BIGINT, eid VARCHAR, cents BIGINT)")


def clear(connection: duckdb.DuckDBPyConnection) -> None:
    """Every definition's days emptied (the copy starts over); the definitions stay registered."""
    for table in _TABLES:
        connection.execute(f"DELETE FROM {table}")


def registered(connection: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in connection.execute("SELECT fid FROM funnel_windows").fetchall()]


def register(connection: duckdb.DuckDBPyConnection, definition: FunnelDefinition) -> None:
    """The definition's days built over every folded row (inside the caller's transaction)."""
    key = funnels.window_key(definition)
    if key in registered(connection):
        return
    stored = json.dumps([[step.type, step.product_id, step.source] for step in definition.steps])
    connection.execute("INSERT INTO funnel_windows VALUES (?, ?)", [key, json.dumps(
        {"steps": json.loads(stored), "window": definition.window_seconds})])
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    _build(connection, key, _definition(connection, key), None, folded)


def drop(connection: duckdb.DuckDBPyConnection, definition: FunnelDefinition) -> None:
    key = funnels.window_key(definition)
    for table in (*_TABLES, "funnel_windows"):
        connection.execute(f"DELETE FROM {table} WHERE fid = ?", [key])


def fold(connection: duckdb.DuckDBPyConnection, folded: int, top: int) -> None:
    """The days reached by the rows applied after ``folded`` up to ``top`` recomputed for every registered
    definition (after the KPI state's fold: their persons have ids)."""
    keys = registered(connection)
    if not keys:
        return
    earliest = connection.execute("SELECT min(occurred_us) FROM events WHERE applied > ? AND applied <= ?",
                                  [folded, top]).fetchone()[0]  # type: ignore[index]
    if earliest is None:
        return
    for key in keys:
        definition = _definition(connection, key)
        _build(connection, key, definition, int(earliest) - definition.window_seconds * 1_000_000, top)


def rebuild(connection: duckdb.DuckDBPyConnection) -> None:
    """Every definition's days refolded (the reporting zone changed)."""
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    for key in registered(connection):
        _build(connection, key, _definition(connection, key), None, folded)


def _definition(connection: duckdb.DuckDBPyConnection, key: str) -> FunnelDefinition:
    body = json.loads(connection.execute("SELECT definition FROM funnel_windows WHERE fid = ?", [key])
                      .fetchone()[0])  # type: ignore[index]
    steps = tuple(FunnelStep(kind, product_id=product, source=source) for kind, product, source in body["steps"])
    return FunnelDefinition("state", steps, window_seconds=body["window"])


def _build(connection: duckdb.DuckDBPyConnection, key: str, definition: FunnelDefinition, since: int | None,
           top: int) -> None:
    """The days of ``key`` whose chains reach ``since`` or later (day end > since; every day when None) computed
    again from the rows applied up to ``top``."""
    low, high = connection.execute("SELECT min(occurred_us), max(occurred_us) FROM events WHERE applied <= ?",
                                   [top]).fetchone()  # type: ignore[misc]
    if since is None:
        since = -1 if low is None else int(low) - 1
    for table in _TABLES:
        connection.execute(f"DELETE FROM {table} WHERE fid = ? AND day_end > ?", [key, since])
    if high is None or int(high) <= since:
        return
    starts = funnels.window_days(max(since, int(low)), int(high), kpi_state.time_zone_of(connection))
    # From the day holding ``since`` (its end is after it).
    first = max(index for index, start in enumerate(starts) if start <= max(since, starts[0]))
    starts = starts[first:]
    sql, params = funnels.window_chains(definition, starts)
    params.update(start=starts[0], top=top, window=definition.window_seconds * 1_000_000)
    used = set(re.findall(r"\$(\w+)", sql))  # DuckDB refuses parameters a statement does not use
    connection.execute(f"INSERT INTO funnel_window_rows SELECT $fid AS fid, * FROM ({sql})",
                       {"fid": key, **{name: value for name, value in params.items() if name in used}})
    capacity = int(connection.execute("SELECT capacity FROM kpi_state").fetchone()[0])  # type: ignore[index]
    for index in range(0, len(starts) - 1, _FOLD_DAYS):
        connection.execute(f"""
            INSERT INTO funnel_window_bits
            SELECT r.fid, r.day_start, any_value(r.day_end), v.level, bitstring_agg(r.id, 0, {capacity - 1})
            FROM funnel_window_rows r JOIN range(1, {len(definition.steps) + 1}) v(level) ON r.level >= v.level
            WHERE r.fid = ? AND r.day_start >= ? AND r.day_start < ?
            GROUP BY r.fid, r.day_start, v.level""",
            [key, starts[index], starts[min(index + _FOLD_DAYS, len(starts) - 1)]])


__all__ = ("clear", "create_state", "drop", "fold", "rebuild", "register", "registered")
