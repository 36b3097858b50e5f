"""The read side's fallback: a funnel the DuckDB engine declines (two steps one event could match) loads the
facts it needs (``FactQuery``) and is answered by the pure domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database
from services.funnel.adapters.facts import FactQuery
from services.funnel.domain.funnels import Breakdown, FunnelDefinition, FunnelResult, funnel_result


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
