"""Schema steps and processed-event claims behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, select, text

from libs.common.db import (
    SCHEMA_MIGRATIONS,
    BulkRows,
    Database,
    Migration,
    claim_events,
    create_all,
    insert,
    wide_at_least,
    wide_sum,
    wide_total,
)

metadata = MetaData()
profiles = Table("profiles", metadata, Column("person_key", String(50), primary_key=True),
                 Column("visits", Integer, nullable=False))
visits = Table("visits", metadata, Column("event_id", String(256), primary_key=True),
               Column("occurred_us", BigInteger, nullable=False), Column("note", Text, nullable=True),
               Column("pages", Integer, nullable=True))
STEP_1 = Migration(1, "profiles", create_all(metadata))
STEP_2 = Migration(2, "profiles.tier", lambda c: c.execute(text("ALTER TABLE profiles ADD COLUMN tier VARCHAR(20)")))


async def test_schema_steps_apply_once_in_order_across_restarts(database_url):
    first = Database(database_url, metadata=metadata, migrations=[STEP_1])
    await first.start()
    await first.close()
    upgraded = Database(database_url, metadata=metadata, migrations=[STEP_2, STEP_1])
    await upgraded.start()
    await upgraded.start()  # a restart finds nothing left to do
    async with upgraded.begin() as connection:
        await connection.execute(text("INSERT INTO profiles (person_key, visits, tier) VALUES ('u-1', 1, 'gold')"))
    async with upgraded.read() as connection:
        versions = (await connection.execute(text(f"SELECT version FROM {SCHEMA_MIGRATIONS} ORDER BY version"))).all()
        tier = (await connection.execute(text("SELECT tier FROM profiles"))).scalar_one()
    await upgraded.close()
    assert [row.version for row in versions] == [1, 2]
    assert tier == "gold"


async def test_claims_return_only_ids_this_consumer_has_not_processed(database_url):
    database = Database(database_url, metadata=metadata, migrations=[STEP_1])
    await database.start()
    try:
        async with database.begin() as connection:
            assert await claim_events(connection, "funnel", ["a", "b", "a"]) == {"a", "b"}
        async with database.begin() as connection:
            assert await claim_events(connection, "funnel", ["b", "c"]) == {"c"}
            assert await claim_events(connection, "segmentation", ["b"]) == {"b"}  # another consumer's own record
        ids = [f"e-{i}" for i in range(1200)]  # more than one chunk of bound parameters
        async with database.begin() as connection:
            assert await claim_events(connection, "funnel", ids) == set(ids)
    finally:
        await database.close()


async def test_a_failed_unit_of_work_keeps_neither_state_nor_claims(database_url):
    database = Database(database_url, metadata=metadata, migrations=[STEP_1])
    await database.start()
    try:
        try:
            async with database.begin() as connection:
                await claim_events(connection, "funnel", ["x"])
                await connection.execute(insert(connection, profiles).values(person_key="u-1", visits=1))
                raise RuntimeError("handler failed")
        except RuntimeError:
            pass
        async with database.begin() as connection:
            assert await claim_events(connection, "funnel", ["x"]) == {"x"}
            assert (await connection.execute(select(profiles))).all() == []
    finally:
        await database.close()


async def test_an_open_read_does_not_hold_up_a_writer(database_url):
    database = Database(database_url, metadata=metadata, migrations=[STEP_1])
    await database.start()
    try:
        async with database.read() as reader:
            await reader.execute(select(profiles))  # the read transaction is open from here

            async def write() -> None:
                async with database.begin() as writer:
                    await writer.execute(insert(writer, profiles).values(person_key="u-1", visits=1))

            await asyncio.wait_for(write(), 5)  # a read holding the write lock would block for busy_timeout
    finally:
        await database.close()


async def test_a_service_adds_its_own_sqlite_pragmas_to_the_shared_ones(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}"
    tuned = Database(url, metadata=metadata, migrations=[STEP_1], sqlite_pragmas=("cache_size=-12345",))
    plain = Database(url, metadata=metadata, migrations=[STEP_1])
    try:
        for database in (tuned, plain):
            await database.start()
        async with tuned.begin() as connection:
            assert (await connection.execute(text("PRAGMA cache_size"))).scalar_one() == -12345
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"  # shared ones kept
        async with plain.read() as connection:
            assert (await connection.execute(text("PRAGMA cache_size"))).scalar_one() == -2000  # SQLite's default
    finally:
        for database in (tuned, plain):
            await database.close()


async def test_sqlite_stores_bound_nulls_and_booleans_as_it_would_without_the_adapters(tmp_path):
    """The adapters db.py registers for None and bool only make binding them cheaper: the stored values (and
    their SQLite types) are those sqlite3 binds without them."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'binding.db'}", metadata=metadata, migrations=[STEP_1])
    await database.start()
    try:
        async with database.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE bound (value)")
            await connection.exec_driver_sql("INSERT INTO bound VALUES (?)", [(None,), (True,), (False,), (0,), ("",)])
            stored = (await connection.exec_driver_sql("SELECT value, typeof(value) FROM bound ORDER BY rowid")).all()
        assert [tuple(row) for row in stored] == [(None, "null"), (1, "integer"), (0, "integer"), (0, "integer"),
                                                  ("", "text")]
    finally:
        await database.close()


async def test_bulk_rows_insert_a_batch_as_one_statement_and_return_only_new_keys(database_url):
    database = Database(database_url, metadata=metadata, migrations=[STEP_1])
    await database.start()
    rows = BulkRows(visits, ("event_id", "occurred_us", "note", "pages"))
    batch = [(f"e-{i}", 1_764_000_000_000_000 + i, "连衣裙 \"quoted\" \\ é" if i % 2 else None, i % 3 or None)
             for i in range(3000)]
    try:
        async with database.begin() as connection:
            dialect = connection.dialect.name
            statement = rows.insert(dialect).on_conflict_do_nothing(index_elements=["event_id"]).returning(
                visits.c.event_id)
            stored = (await connection.execute(statement, rows.params(dialect, batch))).scalars().all()
            assert sorted(stored) == sorted(row[0] for row in batch)
        async with database.begin() as connection:
            again = [batch[7], ("e-new", 2**62, None, None), batch[8]]
            assert (await connection.execute(statement, rows.params(dialect, again))).scalars().all() == ["e-new"]
            assert (await connection.execute(statement, rows.params(dialect, []))).scalars().all() == []
        async with database.read() as connection:
            found = {tuple(row) for row in await connection.execute(select(visits))}
        assert found == {*batch, ("e-new", 2**62, None, None)}  # types, NULLs, big integers and text kept as given
    finally:
        await database.close()


amounts = Table("amounts", MetaData(), Column("line", Integer, primary_key=True), Column("cents", BigInteger))


async def test_wide_sums_stay_exact_and_ordered_past_64_bits(database_url):
    """A plain SUM of these fails on both databases (SQLite: integer overflow; PostgreSQL: bigint out of range)."""
    database = Database(database_url, metadata=amounts.metadata, migrations=[Migration(1, "amounts",
                                                                                         create_all(amounts.metadata))])
    await database.start()
    high, low = wide_sum(amounts.c.cents)
    loop = asyncio.get_running_loop()
    checked = []

    async def check(values: list[int], threshold: int) -> None:
        async with database.begin() as connection:
            await connection.execute(amounts.delete())
            if values:
                await connection.execute(amounts.insert(), [{"line": n, "cents": v} for n, v in enumerate(values)])
            row = (await connection.execute(select(high, low, wide_at_least(high, low, threshold)))).one()
        total = wide_total(row[0], row[1])
        assert total == (sum(values) if values else None)
        assert bool(row[2]) == (values != [] and sum(values) >= threshold)
        checked.append(total)

    # Values up to 2^62 (the largest single amount is 10^14 cents), many of them near the top.
    cents = st.one_of(st.integers(0, 2**62), st.integers(2**62 - 2**33, 2**62), st.integers(0, 2**32 + 1))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @example(values=[2**62] * 5, threshold=2**64 + 1)
    @given(values=st.lists(cents, max_size=12), threshold=st.one_of(st.integers(0, 2**66), st.just(2**64)))
    def sums(values: list[int], threshold: int) -> None:
        asyncio.run_coroutine_threadsafe(check(values, threshold), loop).result()

    try:
        await loop.run_in_executor(None, sums)
    finally:
        await database.close()
    assert any(total is not None and total >= 2**63 for total in checked)
