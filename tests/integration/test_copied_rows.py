"""``BulkRows(copied=True)`` (PostgreSQL: the rows COPYed to a temporary table the statement reads) against the
array form it replaces on the consumers' hot paths: the same rows stored, the same ``RETURNING`` rows, the same
upserts, on random batches with stored keys, NULLs and hostile text; on both databases (SQLite binds the same
JSON either way: the test holds it to the same answers)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, delete, select

from libs.common.db import BulkRows, Database, Migration, create_all

metadata = MetaData()
things = Table("copied_rows_things", metadata, Column("key", String(64), primary_key=True),
               Column("amount", BigInteger, nullable=True), Column("label", Text, nullable=True))
MIGRATIONS = [Migration(1, "things", create_all(metadata))]
COLUMNS = ("key", "amount", "label")
_TEXTS = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
_ROWS = st.lists(st.tuples(st.sampled_from([f"k-{n}" for n in range(8)]),
                           st.none() | st.integers(-2**63, 2**63 - 1), st.none() | _TEXTS),
                 max_size=12, unique_by=lambda row: row[0])


def _statements(dialect: str, rows: BulkRows) -> dict[str, Any]:
    insert = rows.insert(dialect)
    upsert = rows.insert(dialect)
    upsert = upsert.on_conflict_do_update(index_elements=["key"], set_={"amount": upsert.excluded.amount},
                                          where=upsert.excluded.label.is_not(None))
    return {"keep": insert.on_conflict_do_nothing(index_elements=["key"]).returning(things.c.key),
            "upsert": upsert.returning(things.c.key)}


async def _apply(database: Database, rows: BulkRows, batches: list[tuple[str, list[tuple[Any, ...]]]],
                 one_transaction: bool) -> Any:
    """Every batch with its statement, each in a transaction of its own or all in one; the keys each returned and
    the table at the end."""
    returned = []
    async with database.begin() as connection:
        await connection.execute(delete(things))

    async def write(connection: Any, kind: str, batch: list[tuple[Any, ...]]) -> None:
        statements = _statements(connection.dialect.name, rows)
        result = await connection.execute(statements[kind], await rows.bind(connection, batch))
        returned.append(sorted(result.scalars()))

    if one_transaction:
        async with database.begin() as connection:
            for kind, batch in batches:
                await write(connection, kind, batch)
    else:
        for kind, batch in batches:
            async with database.begin() as connection:
                await write(connection, kind, batch)
    async with database.read() as connection:
        table = [tuple(row) for row in await connection.execute(select(things).order_by(things.c.key))]
    return returned, table


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.sampled_from(["keep", "upsert"]), _ROWS), min_size=1, max_size=4),
       one_transaction=st.booleans())
async def test_copied_rows_store_and_return_what_the_arrays_do(database_url, batches, one_transaction):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        arrays = await _apply(database, BulkRows(things, COLUMNS), batches, one_transaction)
        copied = await _apply(database, BulkRows(things, COLUMNS, copied=True), batches, one_transaction)
    finally:
        await database.close()
    assert copied == arrays
    # Not vacuous: what was given is there.
    assert {row[0] for _, batch in batches for row in batch} == {row[0] for row in copied[1]}


async def test_rows_staged_before_the_transactions_first_statement_are_read_by_it(database_url):
    """bind() may come before anything else ran in the transaction (SQLAlchemy begins it lazily)."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        rows = BulkRows(things, COLUMNS, copied=True)
        async with database.begin() as connection:
            await connection.execute(delete(things))
        async with database.begin() as connection:
            params = await rows.bind(connection, [("a", 1, "x"), ("b", None, None)])
            await connection.execute(rows.insert(connection.dialect.name), params)
        async with database.read() as connection:
            assert [tuple(row) for row in await connection.execute(select(things).order_by(things.c.key))] == \
                [("a", 1, "x"), ("b", None, None)]
    finally:
        await database.close()


async def test_rows_are_not_staged_outside_a_transaction(database_url):
    """On a connection that commits each statement (AUTOCOMMIT), PostgreSQL's staged rows would be emptied by ON
    COMMIT before the statement that reads them: refused, nothing stored. SQLite stages nothing: its rows are bound
    as the statement's parameters, as without ``copied``."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        rows = BulkRows(things, COLUMNS, copied=True)
        batch = [("a", 1, "x")]
        async with database.engine.connect() as plain:
            connection = await plain.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(delete(things))
            if connection.dialect.name == "postgresql":
                with pytest.raises(RuntimeError, match="inside a transaction"):
                    await rows.bind(connection, batch)
            else:
                assert await rows.bind(connection, batch) == rows.params(connection.dialect.name, batch)
            assert (await connection.execute(select(things))).all() == []
    finally:
        await database.close()
