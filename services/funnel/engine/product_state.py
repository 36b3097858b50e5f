"""SPEC.md "Definitions" product attributes and a product's first event, kept folded per product in the fact copy.

The compiled form, kept up to date as rows arrive, of two rules whose plain SQL (``facts.product_attributes``,
and the first event of ``matrix.py``'s lifecycle) scans the whole history of every product asked about:

- ``History.products``: each attribute (name, category, price, declared tier) is the latest carried up to as_of,
  by (time, event_id, line), the event's own product at line -1 before its order lines;
- the product's first event of any type (SPEC.md "Product lifecycle"): a non-order event about it, or an order
  event with a line of it (the ``seen_before`` rule ``matrix.py`` had).

``product_state`` holds, per product, the first time and the latest (value, key) of each attribute over the rows
of the copy with ``applied <= folded`` and ``occurred_us <= horizon`` (``copy_state``; ``applied``: the seq the
copy reached with the batch that brought the row; the horizon trails the newest event by a day). Both are a min
or a max, which is what makes the state cheap and exact:

- folding is associative and idempotent: the state of rows A and B is the fold of A's state with B's rows, and
  a row folded twice changes nothing. A query reads ``product_state`` with the rows not in it (applied after
  ``folded``, or later than ``horizon``: a few row groups, found by the zone maps of ``applied`` and
  ``occurred_us``) up to as_of. Values of ``folded`` and ``horizon`` read in the query's transaction are right;
- late and out-of-order events are more rows; an erasure rewrites a person's rows with their product, time,
  event_id and attributes unchanged (the copy deletes and re-appends them), so the state stays right;
- as_of: every row of the state is at or before the horizon, so for as_of >= horizon (asking about now, or
  up to a day back) the state with the other rows up to as_of is the answer. For an earlier as_of the attributes
  are computed from the events (``facts.product_attributes``, a scan of the history); a first time <= X means
  some event <= X for every as_of, so the first time always comes from the state.

The hypothesis tests of products and matrix (tests/unit/funnel/test_engine_products.py, test_engine_matrix.py)
build the copy in random batches folded at random points, erasures included, and compare with the domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import duckdb

from services.funnel.engine import kpi_state
from services.funnel.engine.facts import fetch, product_attributes

ATTRIBUTES = ("name", "category", "price", "tier")
# Rows applied after the last fold beyond which a batch's apply folds them (about a millisecond per thousand rows).
FOLD_ROWS = 100_000
# How far the horizon trails the newest event folded: as_of later than that is answered from the state.
HORIZON_US = 86_400_000_000

STATE_COLUMNS = (
    "product_id VARCHAR, first_us BIGINT, "
    + ", ".join(f"{name} {'BIGINT' if name == 'price' else 'VARCHAR'}, "
                f"{name}_at STRUCT(t BIGINT, eid VARCHAR, line INTEGER)" for name in ATTRIBUTES)
)


def _rows(where: str, wanted: str | None = None) -> str:
    """The rows whose order event or own event ``e`` meets ``where`` (of the products in the CTE ``wanted`` when
    given) in the state's shape: each event's own product (line -1) and each of its order lines."""
    def key(value: str, line: str) -> str:
        return f"CASE WHEN {value} IS NOT NULL THEN struct_pack(t := e.occurred_us, eid := e.event_id, line := {line}) END"

    own = {"name": "e.product_name", "category": "e.category", "price": "e.price_cents", "tier": "e.declared_tier"}
    own_columns = ", ".join(f"{own[name]} AS {name}, {key(own[name], '-1')} AS {name}_at" for name in ATTRIBUTES)
    line_columns = ", ".join(
        f"i.category AS category, {key('i.category', 'i.line')} AS category_at" if name == "category"
        else f"NULL AS {name}, NULL AS {name}_at" for name in ATTRIBUTES
    )
    only = "" if wanted is None else f" AND e.product_id IN (SELECT product_id FROM {wanted})"
    only_lines = "" if wanted is None else f" AND i.product_id IN (SELECT product_id FROM {wanted})"
    return f"""
    SELECT e.product_id, CASE WHEN e.type <> 'order' THEN e.occurred_us END AS first_us, {own_columns}
    FROM events e WHERE {where} AND e.product_id IS NOT NULL{only}
    UNION ALL
    SELECT i.product_id, e.occurred_us AS first_us, {line_columns}
    FROM order_items i JOIN order_events e ON e.event_id = i.event_id
    WHERE {where}{only_lines}"""


def _unfolded(folded: str, horizon: str, until: str | None, wanted: str | None = None) -> str:
    """The rows not in a state folded to ``folded`` and ``horizon``, up to ``until`` (included) when given.
    Two scans that zone maps keep short; a row in both is counted twice, which a min or max does not mind."""
    upto = "" if until is None else f" AND e.occurred_us <= {until}"
    return (_rows(f"e.applied > {folded}{upto}", wanted) + "\n    UNION ALL"
            + _rows(f"e.occurred_us > {horizon}{upto}", wanted))


def _folded(source: str) -> str:
    """``source`` (rows in the state's shape) folded per product: the first time, each attribute's latest."""
    latest = ", ".join(
        f"arg_max({name}, {name}_at) FILTER (WHERE {name}_at IS NOT NULL) AS {name}, max({name}_at) AS {name}_at"
        for name in ATTRIBUTES
    )
    return f"SELECT product_id, min(first_us) AS first_us, {latest} FROM ({source}) GROUP BY product_id"


def create_state(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute(f"CREATE TABLE IF NOT EXISTS product_state ({STATE_COLUMNS})")


def fold(connection: duckdb.DuckDBPyConnection, top: int) -> None:
    """Fold the rows applied up to ``top`` into ``product_state``, up to a horizon a day before the newest event
    (never moving back), and record both in ``copy_state`` (inside the caller's transaction)."""
    folded, horizon = connection.execute("SELECT folded, horizon FROM copy_state").fetchone()  # type: ignore[misc]
    newest = connection.execute("SELECT max(occurred_us) FROM events WHERE applied > ?", [folded]).fetchone()[0]  # type: ignore[index]
    moved = horizon if newest is None else max(horizon, newest - HORIZON_US)
    rows = (_rows(f"e.applied > {int(folded)} AND e.occurred_us <= {int(moved)}") + "\n    UNION ALL"
            + _rows(f"e.occurred_us > {int(horizon)} AND e.occurred_us <= {int(moved)}"))
    connection.execute(f"CREATE OR REPLACE TABLE product_state AS {_folded('SELECT * FROM product_state UNION ALL ' + rows)}")
    connection.execute("UPDATE copy_state SET folded = ?, horizon = ?", [top, moved])


@contextmanager
def snapshot(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction around ``standing`` and the query it chose: both see the same state and rows, whatever
    the copy applies or folds meanwhile."""
    cursor.execute("BEGIN TRANSACTION")
    try:
        yield
    finally:
        cursor.execute("ROLLBACK")


def standing(cursor: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """``copy_state``'s (folded, horizon): the $folded and $state_horizon of ``attributes``, within one ``snapshot``
    with the query; the state answers for an as_of at or after the horizon."""
    folded, horizon = cursor.execute("SELECT folded, horizon FROM copy_state").fetchone()  # type: ignore[misc]
    return int(folded), int(horizon)


def fetch_standing(cursor: duckdb.DuckDBPyConnection, query: Callable[[bool, int | None], str],
                   kept: Mapping[bool, str], params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of a products-route ``query(recent, folded)`` in one ``snapshot``: ``params`` gain $folded and
    $state_horizon; ``recent`` when as_of is at or after the horizon; the statement compiled once (``kept``, by
    recent, with folded None) unless completed order events are applied after ``folded`` (then the KPI state's
    ``counted_orders`` reads those rows too)."""
    with snapshot(cursor):
        params["folded"], params["state_horizon"] = standing(cursor)
        recent = params["as_of"] >= params["state_horizon"]
        fresh = kpi_state.unfolded_completed(cursor, params["folded"])
        return fetch(cursor, query(recent, params["folded"]) if fresh else kept[recent], params)


def latest_categories() -> str:
    """CTE ``categories``: (product_id, category) of every product with a category carried up to $as_of, the
    latest, from the state: for an as_of at or after $state_horizon only (see ``attributes``)."""
    state = _folded("SELECT * FROM product_state UNION ALL " + _unfolded("$folded", "$state_horizon", "$as_of"))
    return f"categories AS (SELECT s.product_id, s.category FROM ({state}) s WHERE s.category IS NOT NULL)"


def attributes(wanted: str, fields: tuple[str, ...] = ATTRIBUTES, *, first: bool = False, recent: bool) -> str:
    """CTE ``attributes``: (product_id, each of ``fields``, and ``first_us`` when ``first``) of the products in the
    CTE ``wanted`` as of $as_of; the same values as ``facts.product_attributes``. ``recent``: $as_of is at or
    after $state_horizon (``standing``), so the state answers; otherwise the attributes come from the events.

    A product missing here has carried no attribute and had no event up to as_of: a LEFT JOIN gives it NULLs."""
    stored = f"SELECT * FROM product_state WHERE product_id IN (SELECT product_id FROM {wanted}) UNION ALL "
    if recent:
        state = _folded(stored + _unfolded("$folded", "$state_horizon", "$as_of", wanted))
        return f"""
attributes AS (
    SELECT s.product_id, {", ".join(f"s.{name}" for name in fields)}{", s.first_us" if first else ""}
    FROM ({state}) s
)"""
    carried = product_attributes(wanted, fields)[1:].replace("attributes AS (", "carried_attributes AS (", 1)
    if not first:
        return f"{carried},\nattributes AS (SELECT * FROM carried_attributes)"
    firsts = f"SELECT product_id, min(first_us) AS first_us FROM ({stored + _unfolded('$folded', '$state_horizon', None, wanted)}) GROUP BY product_id"
    return f"""{carried},
attributes AS (
    SELECT w.product_id, {", ".join(f"c.{name}" for name in fields)}, f.first_us
    FROM (SELECT DISTINCT product_id FROM {wanted}) w LEFT JOIN carried_attributes c USING (product_id)
    LEFT JOIN ({firsts}) f USING (product_id)
)"""


__all__ = ("ATTRIBUTES", "FOLD_ROWS", "attributes", "create_state", "fold", "latest_categories", "snapshot", "standing")
