"""The read side: each answer loads the facts it needs (``FactQuery``) and hands them to the pure domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database
from services.funnel.adapters.facts import FactQuery
from services.funnel.domain.channels import CHANNEL_LOOKBACK, ChannelMetrics, channel_metrics
from services.funnel.domain.funnels import Breakdown, FunnelDefinition, FunnelResult, funnel_result
from services.funnel.domain.products import (
    LIFECYCLE_PERIOD,
    MATRIX_PERIOD,
    MatrixEntry,
    ProductMetrics,
    product_matrix,
    product_metrics,
)

_MICROSECOND = timedelta(microseconds=1)


@asynccontextmanager
async def snapshot(database: Database) -> AsyncIterator[AsyncConnection]:
    """One read transaction whose statements all see the same committed state."""
    async with database.read() as connection:
        if not database.is_sqlite:
            # PostgreSQL's default (read committed) would let an answer's several reads see different moments.
            await connection.execution_options(isolation_level="REPEATABLE READ")
        # SQLite: Database.read() begins the transaction itself, which already gives one snapshot.
        yield connection


async def funnel(
    connection: AsyncConnection, definition: FunnelDefinition, start: datetime, end: datetime, as_of: datetime,
    breakdown: Breakdown | None, *, max_rows: int | None = None,
) -> FunnelResult:
    """One funnel over entrants in [start, end) (SPEC.md "Funnel")."""
    window = timedelta(seconds=definition.window_seconds)
    # A chain starting before `end` ends at most `window` later; only events of the steps' types can join it.
    query = FactQuery(start, end + window, as_of, types={step.type for step in definition.steps}, max_rows=max_rows)
    if breakdown == "category" or any(step.category is not None for step in definition.steps):
        query.with_product_attributes()
    return funnel_result(definition, await query.load(connection), start, end, as_of, breakdown)


async def products(
    connection: AsyncConnection, start: datetime, end: datetime, as_of: datetime, *, max_rows: int | None = None,
) -> list[ProductMetrics]:
    """Per product metrics over [start, end) (SPEC.md "Product metrics")."""
    facts = await (
        FactQuery(start, end, as_of, max_rows=max_rows).with_refunds_of_orders_placed(start, end)
        .with_product_attributes().load(connection)
    )
    return product_metrics(facts, start, end, as_of)


async def matrix(connection: AsyncConnection, as_of: datetime, *, max_rows: int | None = None) -> list[MatrixEntry]:
    """Suggested and declared tiers with lifecycle stages (SPEC.md "Product matrix", "Product lifecycle")."""
    # The lifecycle compares the last 28 days with the 28 before; the matrix looks at the last 30.
    period = max(MATRIX_PERIOD, 2 * LIFECYCLE_PERIOD)
    facts = await (
        FactQuery(as_of - period + _MICROSECOND, as_of + _MICROSECOND, as_of, max_rows=max_rows)
        .with_product_attributes()
        .with_first_events_of_products()
        .load(connection)
    )
    return product_matrix(facts, as_of)


async def channels(
    connection: AsyncConnection, start: datetime, end: datetime, as_of: datetime, *, max_rows: int | None = None,
) -> list[ChannelMetrics]:
    """Per channel source over [start, end) (SPEC.md "Channel of an order", channel metrics)."""
    facts = await (
        FactQuery(start, end, as_of, max_rows=max_rows)
        .with_earlier_orders_of_buyers(start, end)
        .with_touches_before(start, end, CHANNEL_LOOKBACK)
        .load(connection)
    )
    return channel_metrics(facts, start, end, as_of)
