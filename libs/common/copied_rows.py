"""A batch of rows inserted on PostgreSQL through ``COPY`` instead of one ``INSERT`` over ``unnest()``ed arrays.

The consumers write a batch of thousands of rows as one statement. Over arrays (``unnest($1::text[], ...)``)
asyncpg encodes each array in Cython but checks every element against ``collections.abc`` classes (is it a
sub-array?), two Python-level ``isinstance`` calls per string: about a sixth of the funnel consumer's CPU on
PostgreSQL (py-spy, docs/funnel.md "Consumer throughput"). asyncpg's binary ``COPY`` encodes each row by the
columns' codecs with no such check, but ``COPY`` has no ``ON CONFLICT``: the rows go to a temporary table of the
transaction (``ON COMMIT DELETE ROWS``: emptied at its end, whatever the outcome), and one ``INSERT ... SELECT``
moves them with the same ``ON CONFLICT`` clause the array form had. Where two rows of one call share a key the
array form kept the first: ``order_by`` names a column that increases with the rows' order (the funnel's seq) for
a call that may hold such rows. tests/integration/funnel/test_store.py holds the funnel's write to each event_id's
first row, on random batches with repeats, on both databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection


def staging_table(table: str) -> str:
    """The temporary table a batch of ``table`` is copied into (never the table's own name: a temporary table
    hides a table of the same name for the rest of the connection's life)."""
    return f"copied_{table}"


async def stage_rows(connection: AsyncConnection, table: str, columns: Sequence[str],
                     rows: Sequence[Sequence[Any]]) -> str:
    """Copy ``rows`` into the connection's staging table of ``table`` (emptied first; PostgreSQL through asyncpg,
    inside the open transaction) and return its name, for a statement to read them from."""
    driver = (await connection.get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        # SQLAlchemy begins the transaction at the connection's first statement: outside it the rows would be
        # committed on their own, and emptied by ON COMMIT before the statement that reads them.
        await connection.exec_driver_sql("SELECT 1")
        if not driver.is_in_transaction():
            raise RuntimeError("rows are staged inside a transaction (Database.begin)")
    staged = staging_table(table)
    # Created once per connection (IF NOT EXISTS: again after a rolled-back transaction dropped it); emptied at
    # each commit, and here for a second batch in one transaction.
    await driver.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staged} "
                         f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS; TRUNCATE {staged}")
    await driver.copy_records_to_table(staged, records=rows, columns=list(columns))
    return staged


async def copy_rows(connection: AsyncConnection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                    *, on_conflict: str, order_by: str | None = None) -> None:
    """``INSERT INTO table (columns) <rows> ON CONFLICT <on_conflict>`` inside the connection's open transaction
    (PostgreSQL through asyncpg); ``table``, ``columns`` and ``on_conflict`` are the code's own names, never input."""
    if not rows:
        return
    staged, names = await stage_rows(connection, table, columns, rows), ", ".join(columns)
    order = f" ORDER BY {order_by}" if order_by else ""
    driver = (await connection.get_raw_connection()).driver_connection
    await driver.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staged}{order} ON CONFLICT {on_conflict}")
