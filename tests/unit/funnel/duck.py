"""Facts loaded into a fresh DuckDB copy, as the service's mirror holds them: the engine tests' input."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import replace

import duckdb
from hypothesis import strategies as st

from services.funnel.adapters.facts import fact_rows
from services.funnel.adapters.mirror import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    append,
    arrow_batch,
    create_tables,
    fold_state,
    replace_revised,
)
from services.funnel.domain.facts import FunnelEvent

ERASED = "erased:pseudonym"


def duck_of(facts: Sequence[FunnelEvent], *, cuts: Sequence[int] = (), folds: Collection[int] = (),
            erase: str | None = None, time_zone: str = "UTC") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database holding these facts (first arrival of an event_id, as the consumer keeps),
    applied as the copy applies them: in batches split at ``cuts`` (positions in the facts, in their order),
    ``product_state`` folded after the batches numbered in ``folds``; then, with ``erase``, that person's rows
    rewritten under ``ERASED`` as an erasure does (deleted, appended again as a later batch, folded when
    ``folds`` holds -1), as the copy does (``replace_revised``: the KPI state renames the person first). The KPI
    state's days are those of ``time_zone``. Whatever the batches, folds and zone, every answer must be the same."""
    first = list({fact.event_id: fact for fact in reversed(facts)}.values())
    connection = duckdb.connect(":memory:")
    create_tables(connection, time_zone)
    bounds = sorted({0, len(first), *(cut % (len(first) + 1) for cut in cuts)})
    applied = 0
    for number, (low, high) in enumerate(itertools.pairwise(bounds)):
        applied += high - low
        append_facts(connection, first[low:high], applied)
        if number in folds:
            _fold(connection, applied, stepped=number % 2 == 1)
    if erase is not None:
        revised = [replace(fact, person_key=ERASED) for fact in first if fact.person_key == erase]
        event_rows, item_rows = fact_rows(revised)
        batch = arrow_batch(EVENTS_SCHEMA, event_rows)
        replace_revised(connection, batch, [fact.event_id for fact in revised])
        applied += len(revised) + 1
        append(connection, "events", batch, applied)
        append(connection, "order_items", arrow_batch(ITEMS_SCHEMA, item_rows), applied)
        if -1 in folds:
            _fold(connection, applied, stepped=True)
    return connection


def _fold(connection: duckdb.DuckDBPyConnection, applied: int, *, stepped: bool) -> None:
    """``fold_state`` in one statement group, or ``stepped`` in a transaction committed between its parts (as the
    first load folds)."""
    if not stepped:
        fold_state(connection, applied)
        return

    def step() -> None:
        connection.execute("COMMIT")
        connection.execute("BEGIN")

    connection.execute("BEGIN")
    fold_state(connection, applied, step)
    connection.execute("COMMIT")


def erased(facts: Sequence[FunnelEvent], person_key: str | None) -> list[FunnelEvent]:
    """The facts after an erasure of ``person_key`` (as ``duck_of(..., erase=person_key)`` holds them)."""
    return [replace(fact, person_key=ERASED) if fact.person_key == person_key else fact for fact in facts]


def append_facts(connection: duckdb.DuckDBPyConnection, facts: Sequence[FunnelEvent], applied: int) -> None:
    """These facts appended to the copy as one batch, as of seq ``applied``."""
    event_rows, item_rows = fact_rows(facts)
    append(connection, "events", arrow_batch(EVENTS_SCHEMA, event_rows), applied)
    append(connection, "order_items", arrow_batch(ITEMS_SCHEMA, item_rows), applied)


# How a test copy is applied: batch cuts, folds after some batches (-1: after the erasure), an erased person.
applications = st.fixed_dictionaries({
    "cuts": st.lists(st.integers(0, 100), max_size=4),
    "folds": st.sets(st.integers(-1, 4), max_size=3),
    "erase": st.sampled_from((None, None, "x0-ann", "x0-bob")),  # build(raw, 0)'s persons
})


def stale_latest_views(duck: duckdb.DuckDBPyConnection) -> int:
    """For the persons with no view applied since the fold (and no shared number), the rows of ``prior_views`` that
    differ from one row per folded event that is not a view with its person's latest view at or before it among the
    copy's rows (a correlated max, not the fold's ASOF JOIN), either way."""
    return duck.execute("""
        WITH standing AS (SELECT folded FROM copy_state),
        kept AS (
            SELECT ph FROM events EXCEPT SELECT ph FROM events, standing WHERE applied > folded AND type = 'view'
            EXCEPT SELECT ph FROM hash_clashes
        ),
        expected AS (
            SELECT e.type, e.ph, e.occurred_us AS t, (
                SELECT max(v.occurred_us) FROM events v
                WHERE v.type = 'view' AND v.ph = e.ph AND v.occurred_us <= e.occurred_us) AS pv
            FROM events e, standing s WHERE e.type <> 'view' AND e.applied <= s.folded AND e.ph IN (SELECT ph FROM kept)
        ),
        held AS (SELECT * FROM prior_views WHERE ph IN (SELECT ph FROM kept))
        SELECT (SELECT count(*) FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM held))
             + (SELECT count(*) FROM (SELECT * FROM held EXCEPT ALL SELECT * FROM expected))""").fetchone()[0]
