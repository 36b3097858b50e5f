"""Facts loaded into a fresh DuckDB copy, as the service's mirror holds them: the engine tests' input."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from services.funnel.adapters.facts import fact_rows
from services.funnel.adapters.mirror import EVENTS_SCHEMA, ITEMS_SCHEMA, append, arrow_batch, create_tables
from services.funnel.domain.facts import FunnelEvent


def duck_of(facts: Sequence[FunnelEvent]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database holding these facts (first arrival of an event_id, as the consumer keeps)."""
    first = list({fact.event_id: fact for fact in reversed(facts)}.values())
    event_rows, item_rows = fact_rows(first)
    connection = duckdb.connect(":memory:")
    create_tables(connection)
    append(connection, "events", arrow_batch(EVENTS_SCHEMA, event_rows))
    append(connection, "order_items", arrow_batch(ITEMS_SCHEMA, item_rows))
    return connection
