"""SPEC.md "Definitions" rules for orders and product attributes, compiled to DuckDB SQL over the fact copy.

The compiled form of ``services.funnel.domain.facts.History``: ``placed_orders`` is ``History.orders`` (an
order counts once, at its earliest completed event up to as_of, ties by event_id: ``kpi_state.counted_orders``)
restricted to a span, and ``product_attributes`` is ``History.products`` (each attribute the latest carried up to as_of, ties by
event_id; in one event its own product before its order lines, lines in order). They are CTE texts that the
report queries (products.py, matrix.py, channels.py) put in front of their own; the hypothesis tests of those
hold every report equal to the domain, and so these rules with them.

Parameters: ``$as_of`` (epoch micros, included) and the span's ``$since`` (included) and ``$until``
(excluded). Times are epoch micros, money integer cents (sums as HUGEINT: no sum of accepted amounts
overflows).
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import duckdb


def micros(period: timedelta) -> int:
    """A period in whole microseconds, the copy's unit of time."""
    return (period.days * 86_400 + period.seconds) * 1_000_000 + period.microseconds


def first_completed(columns: str, where: str) -> str:
    """SQL: per order, its earliest completed event (ties by the smallest event_id) among the rows of ``order_events
    e`` meeting ``where``, with ``columns`` of ``e``: where ``History.orders`` counts an order. The one form of that
    rule over the rows: the KPI state's fold (``kpi_state.counting_events``), the KPIs' plain SQL and a funnel's
    order step take it from here."""
    return f"""SELECT {columns} FROM order_events e
    WHERE {where} AND e.order_status = 'completed' AND e.order_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY e.order_id ORDER BY e.occurred_us, e.event_id) = 1"""


def placed_orders() -> str:
    """CTEs ``placed_events`` (the orders of the CTE ``counted``, ``kpi_state.counted_orders``, whose counting event
    lies in [$since, $until) and at or before $as_of: event_id, order_id, person_key, person_id, occurred_us, amount: the
    total, else the sum of the lines, ``OrderFacts.amount``) and ``placed_lines`` (their lines, with ``cents``)."""
    return """
placed_events AS (
    SELECT event_id, order_id, person_key, person_id, occurred_us, amount FROM counted
    WHERE occurred_us >= $since AND occurred_us < $until AND occurred_us <= $as_of
),
placed_lines AS (
    SELECT i.event_id, i.product_id, i.line, i.quantity, i.quantity::HUGEINT * i.unit_price_cents AS cents
    FROM order_items i SEMI JOIN placed_events p ON p.event_id = i.event_id
)"""


def product_attributes(wanted: str, fields: tuple[str, ...] = ("name", "category", "price", "tier")) -> str:
    """CTE ``attributes``: (product_id, and each of ``fields``) of the products in the CTE ``wanted``
    (a product_id column), each the latest carried up to $as_of (SPEC.md "Definitions": product attributes).

    In two steps, about twice as fast as one ``arg_max`` over (time, event_id, line) keys: the latest instant
    each attribute was carried at (a plain max), then among the carriers at that instant the largest
    (event_id, line)."""
    own = {"name": "e.product_name", "category": "e.category", "price": "e.price_cents", "tier": "e.declared_tier"}
    carried = " OR ".join(f"{own[field]} IS NOT NULL" for field in fields)
    own_columns = ", ".join(f"{own[field]} AS {field}" for field in fields)
    # Order lines carry a category only.
    line_columns = ", ".join(
        f"i.category AS {field}" if field == "category" else f"NULL AS {field}" for field in fields
    )
    lines = (
        f"""
    UNION ALL
    SELECT i.product_id, e.occurred_us AS t, e.event_id, i.line, {line_columns}
    FROM order_items i JOIN order_events e ON e.event_id = i.event_id
    WHERE i.category IS NOT NULL AND e.occurred_us <= $as_of AND i.product_id IN (SELECT product_id FROM {wanted})"""
        if "category" in fields else ""
    )
    instants = ", ".join(f"max(t) FILTER (WHERE {field} IS NOT NULL) AS {field}_t" for field in fields)
    latest = ", ".join(
        f"arg_max(c.{field}, struct_pack(eid := c.event_id, line := c.line)) "
        f"FILTER (WHERE c.{field} IS NOT NULL AND c.t = l.{field}_t) AS {field}"
        for field in fields
    )
    return f"""
carriers AS MATERIALIZED (
    SELECT e.product_id, e.occurred_us AS t, e.event_id, -1 AS line, {own_columns}
    FROM events e SEMI JOIN {wanted} w ON w.product_id = e.product_id
    WHERE e.occurred_us <= $as_of AND ({carried}){lines}
),
carried_at AS (
    SELECT product_id, {instants} FROM carriers GROUP BY product_id
),
attributes AS (
    SELECT c.product_id, {latest}
    FROM carriers c JOIN carried_at l USING (product_id)
    WHERE c.t IN ({", ".join(f"l.{field}_t" for field in fields)})
    GROUP BY c.product_id
)"""


def decimal_of(cents: Any) -> Decimal:
    """Integer cents from the copy as the domain's Decimal amount."""
    return Decimal(int(cents)).scaleb(-2)


def optional_decimal_of(cents: Any) -> Decimal | None:
    return None if cents is None else decimal_of(cents)


def fetch(cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` with the parameters it uses (DuckDB refuses named parameters a statement does not use)."""
    used = set(re.findall(r"\$(\w+)", sql))
    return cursor.execute(sql, {name: value for name, value in params.items() if name in used}).fetchall()
