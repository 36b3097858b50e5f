"""The DuckDB copy holds exactly the stored facts: loaded at start (PostgreSQL: bulk CSV, SQLite: batches),
followed by seq afterwards, and rewritten rows (erasure) replaced — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from sqlalchemy import select

from libs.common.db import Database
from services.funnel.adapters.facts import pseudonymise_persons, store_facts
from services.funnel.adapters.mirror import EVENTS_SCHEMA, ITEMS_SCHEMA, LOAD_FOLD_BYTES, FactMirror
from services.funnel.adapters.tables import MIGRATIONS, events, metadata, order_items
from services.funnel.decoding import decode_event
from services.funnel.engine import kpi_state, product_state
from services.funnel.handlers import EventRecorder
from tests.integration.funnel.helpers import facts, inquiry, order, refund, review, view
from tests.support import eventually
from tests.unit.funnel.duck import stale_latest_views

T = datetime(2026, 3, 1, tzinfo=UTC)
# Text that CSV must quote or could take for NULL, and text that is not ASCII.
AWKWARD = ('comma, "quoted"', "", "line\nbreak", "真丝连衣裙", "\\N", "NULL")


def _events(offset: int):
    built = [view(f"u-{offset}-{n}", T + timedelta(minutes=n), f"p-{n}", category=name or None, price="9.99",
                  name=name) for n, name in enumerate(AWKWARD)]
    built += [order(f"u-{offset}-0", T + timedelta(hours=1), f"o-{offset}", [("p-0", 2, "5.00"), ("p-1", 1, "0.01")],
                    source="ads, \"spring\""),
              refund(f"u-{offset}-0", T + timedelta(hours=2), f"o-{offset}", None),
              review(f"u-{offset}-1", T, 4, "p-1"),
              inquiry(f"u-{offset}-0", T + timedelta(minutes=30), "p-1", response_seconds=5)]
    return facts(built)


async def _stored(database: Database) -> tuple[list[tuple], list[tuple]]:
    names = [field.name for field in EVENTS_SCHEMA]
    async with database.read() as connection:
        rows = (await connection.execute(select(*(events.c[n] for n in names)))).all()
        items = (await connection.execute(select(order_items))).all()
    return sorted(map(tuple, rows)), sorted(map(tuple, items))


def _copied(mirror: FactMirror) -> tuple[list[tuple], list[tuple]]:
    names = ", ".join(field.name for field in EVENTS_SCHEMA)
    items = ", ".join(field.name for field in ITEMS_SCHEMA)
    orders = mirror.duckdb.execute(f"SELECT {names} FROM order_events").fetchall()
    assert sorted(orders) == sorted(mirror.duckdb.execute(
        f"SELECT {names} FROM events WHERE order_status IS NOT NULL").fetchall())
    assert orders, "the order events are copied to order_events"
    return (sorted(mirror.duckdb.execute(f"SELECT {names} FROM events").fetchall()),
            sorted(mirror.duckdb.execute(f"SELECT {items} FROM order_items").fetchall()))


def _state_is_the_fold_of_its_rows(mirror: FactMirror) -> None:
    """product_state holds exactly the fold of the copy's rows up to its horizon (every row applied is folded
    when FOLD_ROWS is 1)."""
    connection = mirror.duckdb
    horizon = connection.execute("SELECT horizon FROM copy_state").fetchone()[0]
    # The reference fold, from scratch, of the rows the state should hold (private SQL of the module under test).
    every_row = product_state._folded(product_state._rows(f"e.occurred_us <= {horizon}"))
    want = connection.execute(f"SELECT * FROM ({every_row}) ORDER BY product_id").fetchall()
    assert connection.execute("SELECT * FROM product_state ORDER BY product_id").fetchall() == want


def _kpi_state_is_the_fold_of_its_rows(mirror: FactMirror) -> None:
    """The KPI state holds exactly what its rows say (every row applied is folded when FOLD_ROWS is 1): each
    (day, type)'s bits are the ids of the persons with such an event that day, each (day, source)'s those of the
    persons with a view from that source (a bitstring or id rows); ids are unique; each order's
    counting event, person id and earliest refund; every inquiry by its person's id."""
    connection = mirror.duckdb
    ids = dict(connection.execute("SELECT person_key, id FROM person_ids").fetchall())
    assert len(set(ids.values())) == len(ids)
    keys = {number: key for key, number in ids.items()}
    capacity, time_zone = connection.execute("SELECT capacity, time_zone FROM kpi_state").fetchone()
    present = {(day, kind, keys[i]) for day, kind, i in connection.execute(
        f"SELECT p.day_start, p.type, r.i FROM presence p, range({capacity}) r(i) WHERE get_bit(p.bits, r.i::INTEGER) = 1"
    ).fetchall()}
    low, high = connection.execute("SELECT min(occurred_us), max(occurred_us) FROM events").fetchone()
    starts = kpi_state.day_starts(low, high, time_zone)
    want = set(connection.execute(
        f"SELECT DISTINCT {kpi_state.day_of('e.occurred_us', starts)}, e.type, e.person_key FROM events e "
        f"WHERE e.type IN ('view', 'add_to_cart', 'inquiry')").fetchall())
    assert present == want
    viewed = {(day, source, keys[i]) for day, source, i in connection.execute(
        f"SELECT p.day_start, p.source, r.i FROM source_presence p, range({capacity}) r(i) "
        "WHERE get_bit(p.bits, r.i::INTEGER) = 1 UNION ALL SELECT day_start, source, id FROM source_viewers").fetchall()}
    # A (day, source) is a bitstring or id rows, each id once.
    assert connection.execute("SELECT count(*) FROM source_viewers SEMI JOIN source_presence USING (day_start, source) "
                              "UNION ALL SELECT count(*) - count(DISTINCT (day_start, source, id)) FROM source_viewers"
                              ).fetchall() == [(0,), (0,)]
    assert viewed == set(connection.execute(
        f"SELECT DISTINCT {kpi_state.day_of('e.occurred_us', starts)}, e.source, e.person_key FROM events e "
        "WHERE e.type = 'view'").fetchall())
    orders = connection.execute(
        "SELECT order_id, event_id, person_key, person_id, occurred_us, amount, refund_us FROM order_state").fetchall()
    counting = {row[0]: row[1:] for row in connection.execute(kpi_state.counting_events("true")).fetchall()}
    refunds = dict(connection.execute("SELECT order_id, min(occurred_us) FROM order_events "
                                      "WHERE order_status = 'refunded' GROUP BY order_id").fetchall())
    assert {row[0] for row in orders} == set(counting) | set(refunds)
    for order_id, event_id, person_key, person_id, occurred_us, amount, refund_us in orders:
        if order_id in counting:
            assert (event_id, person_key, occurred_us, amount) == counting[order_id]
            assert person_id == ids[person_key]
        else:
            assert event_id is None
        assert refund_us == refunds.get(order_id)
    numbers = dict(connection.execute("SELECT num, order_id FROM order_state").fetchall())
    assert len(numbers) == len(orders)
    folded_refunds = [(event_id, t, cents, numbers[number]) for event_id, t, cents, number in connection.execute(
        "SELECT * FROM refund_state").fetchall()]
    assert sorted(folded_refunds) == sorted(connection.execute(
        "SELECT event_id, occurred_us, refund_cents, order_id FROM order_events WHERE order_status = 'refunded'"
    ).fetchall())
    inquiries = {(t, keys[i]) for t, i in connection.execute("SELECT * FROM inquiry_state").fetchall()}
    assert inquiries == set(connection.execute(
        "SELECT occurred_us, person_key FROM events WHERE type = 'inquiry'").fetchall())
    # Every row carries its person's number, and the registry holds exactly the (number, key) pairs of the rows
    # (an erased key left it), with no clash.
    for table in ("events", "order_events"):
        assert connection.execute(f"SELECT count(*) FROM {table} WHERE ph IS DISTINCT FROM hash(person_key)"
                                  ).fetchone()[0] == 0
    assert sorted(connection.execute("SELECT * FROM person_hashes").fetchall()) == sorted(connection.execute(
        "SELECT DISTINCT ph, person_key FROM events").fetchall())
    assert connection.execute("SELECT count(*) FROM hash_clashes").fetchone()[0] == 0
    # Each folded row that is not a view is in prior_views with its person's latest view (but for the persons a view
    # of whom is not folded yet).
    assert stale_latest_views(connection) == 0


@pytest.mark.parametrize("fold_rows", [product_state.FOLD_ROWS, 1])
async def test_the_copy_equals_the_stored_facts_through_load_follow_and_erasure(database_url, fold_rows, monkeypatch):
    monkeypatch.setattr(product_state, "FOLD_ROWS", fold_rows)
    if fold_rows == 1:  # a (day, source) of two viewers or more a bitstring, the others id rows
        monkeypatch.setattr(kpi_state, "sparse_limit", lambda capacity: 1)
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    mirror = FactMirror(database)
    try:
        async with database.begin() as connection:
            await store_facts(connection, _events(1))
        assert await mirror.refresh() > 0  # the first load (PostgreSQL: bulk)
        stored = await _stored(database)
        assert len(stored[0]) == len(AWKWARD) + 4 and len(stored[1]) == 2
        assert _copied(mirror) == stored

        async with database.begin() as connection:
            await store_facts(connection, _events(2))
        assert await mirror.refresh() == len(AWKWARD) + 4
        assert _copied(mirror) == await _stored(database)

        async with database.begin() as connection:
            await pseudonymise_persons(connection, {"u-1-0": "erased:x"})
        assert await mirror.refresh() == 4  # u-1-0's view, order, refund and inquiry, rewritten
        copied = _copied(mirror)
        assert copied == await _stored(database)
        assert not any("u-1-0" in row for row in copied[0])
        assert len(copied[1]) == 4  # the order's lines replaced, not doubled
        assert await mirror.refresh() == 0
        if fold_rows == 1:
            # Events a month later move the horizon past the others: the state then holds them all, the erased
            # person's rewritten rows included.
            async with database.begin() as connection:
                await store_facts(connection, facts([view("u-3-0", T + timedelta(days=30), "p-9", name="later")]))
            assert await mirror.refresh() == 1
            assert mirror.duckdb.execute("SELECT horizon FROM copy_state").fetchone()[0] > 0
            _state_is_the_fold_of_its_rows(mirror)
            _kpi_state_is_the_fold_of_its_rows(mirror)
            assert all(mirror.duckdb.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                       for table in ("source_presence", "source_viewers"))  # both kinds checked
            # p-0 .. p-5 (the later p-9 is past the horizon, a day before it: read beside the state).
            assert mirror.duckdb.execute("SELECT count(*) FROM product_state").fetchone()[0] == len(AWKWARD)
    finally:
        await mirror.stop()
        await database.close()


async def test_a_first_load_that_fails_or_stops_half_way_leaves_no_half_loaded_copy(database_url, tmp_path,
                                                                                    monkeypatch):
    """The first load commits its rows and their fold in steps (PostgreSQL; on SQLite the batches fold as they
    apply): a failure in the fold empties the copy for the retry, and a process stopped there (nothing cleaned up)
    leaves a file the next start rebuilds, not a copy with rows and half their state."""
    monkeypatch.setattr(product_state, "FOLD_ROWS", 1)  # SQLite's batches fold too
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    failing = True
    fold_orders = kpi_state._fold_orders

    def failing_fold_orders(connection, where):
        if failing:
            raise RuntimeError("disk full")
        fold_orders(connection, where)

    monkeypatch.setattr(kpi_state, "_fold_orders", failing_fold_orders)
    try:
        for offset in (1, 2):
            async with database.begin() as connection:
                await store_facts(connection, _events(offset))
        stored = await _stored(database)
        mirror = FactMirror(database, directory=tmp_path / "failed", memory_limit="300MB", load_memory_limit="100MB")
        with pytest.raises(RuntimeError, match="disk full"):
            await mirror.refresh()
        assert mirror.duckdb.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        failing = False
        assert await mirror.refresh() == len(stored[0])
        assert _copied(mirror) == stored
        _kpi_state_is_the_fold_of_its_rows(mirror)
        await mirror.stop()

        failing = True
        clear = FactMirror._clear
        monkeypatch.setattr(FactMirror, "_clear", lambda self: None)  # the process dies in the fold
        mirror = FactMirror(database, directory=tmp_path / "stopped", load_memory_limit="100MB")
        with pytest.raises(RuntimeError, match="disk full"):
            await mirror.refresh()
        await mirror.stop()
        monkeypatch.setattr(FactMirror, "_clear", clear)
        failing = False
        mirror = FactMirror(database, directory=tmp_path / "stopped", load_memory_limit="100MB")
        assert await mirror.refresh() == len(stored[0])  # everything loaded again
        assert _copied(mirror) == stored
        _kpi_state_is_the_fold_of_its_rows(mirror)
        await mirror.stop()
    finally:
        await database.close()


def _memory_limit_of(size: str) -> str:
    """How DuckDB shows a memory_limit set to ``size``."""
    with duckdb.connect(config={"memory_limit": size}) as configured:
        return configured.execute("SELECT current_setting('memory_limit')").fetchone()[0]


@pytest.mark.parametrize("failure", [duckdb.OutOfMemoryException, duckdb.FatalException])
@pytest.mark.parametrize("on_disk", [True, False])
async def test_a_first_load_runs_under_its_own_buffer_pool_and_one_out_of_it_is_retried_under_the_retrys(
        database_url, tmp_path, monkeypatch, failure, on_disk):
    """PostgreSQL's bulk load (which sets the process's peak memory) runs in steps under ``load_memory_limit``; a
    load that fails in DuckDB there (out of that pool; or its checkpoint out of it, which invalidates the database:
    a FatalException) leaves an empty copy and drops that limit, so the retry runs in one transaction under
    ``retry_memory_limit``; the copy's limit is back after either; in a file or in memory. SQLite's batches never
    use either."""
    monkeypatch.setattr(product_state, "FOLD_ROWS", 1)  # SQLite's batches fold as they apply
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    # Per fold: the buffer pool, whether it commits in steps, and the presence fold's budget per statement.
    limits: list[tuple[str, bool, int | None]] = []
    out_of_memory = True
    fold = kpi_state.fold

    def recording_fold(connection, top, step=None, fold_bytes=None):
        limits.append((connection.execute("SELECT current_setting('memory_limit')").fetchone()[0], step is not None,
                       fold_bytes))
        if out_of_memory:
            raise failure("failed to pin block")
        fold(connection, top, step, fold_bytes)

    monkeypatch.setattr(kpi_state, "fold", recording_fold)
    own, load, retry = _memory_limit_of("300MB"), _memory_limit_of("100MB"), _memory_limit_of("200MB")
    try:
        for offset in (1, 2):
            async with database.begin() as connection:
                await store_facts(connection, _events(offset))
        stored = await _stored(database)
        mirror = FactMirror(database, directory=tmp_path if on_disk else None, memory_limit="300MB",
                            load_memory_limit="100MB", retry_memory_limit="200MB")
        with pytest.raises(failure):
            await mirror.refresh()
        assert mirror.duckdb.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert mirror.duckdb.execute("SELECT current_setting('memory_limit')").fetchone()[0] == own
        out_of_memory = False
        assert await mirror.refresh() == len(stored[0])
        assert _copied(mirror) == stored
        _kpi_state_is_the_fold_of_its_rows(mirror)
        # PostgreSQL: in steps under the load's (with the smaller budget), then in one transaction under the retry's.
        assert limits == ([(own, False, None)] * 2 if database.is_sqlite
                          else [(load, True, LOAD_FOLD_BYTES), (retry, False, None)])
        assert mirror.duckdb.execute("SELECT current_setting('memory_limit')").fetchone()[0] == own
        await mirror.stop()

        # A load that does not run out of it keeps it for the next copy's load.
        limits.clear()
        mirror = FactMirror(database, directory=tmp_path / "second", memory_limit="300MB", load_memory_limit="100MB")
        assert await mirror.refresh() == len(stored[0])
        assert limits == ([(own, False, None)] if database.is_sqlite else [(load, True, LOAD_FOLD_BYTES)])
        assert mirror.duckdb.execute("SELECT current_setting('memory_limit')").fetchone()[0] == own
        await mirror.stop()
        for sizes in ({"load_memory_limit": "1GB'; DROP TABLE events; --"}, {"memory_limit": "1GB' --"},
                      {"retry_memory_limit": "1GB' --"}):
            with pytest.raises(ValueError, match="not a memory size"):
                FactMirror(database, **sizes)
    finally:
        await database.close()


async def test_a_sync_that_keeps_failing_is_retried_after_pauses_doubling_up_to_the_maximum(database_url, monkeypatch):
    """Each failure in a row doubles the pause before the next attempt (a failed first load exports every row
    again), up to ``retry_max_seconds``; a success goes back to the poll; the state says which."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    mirror = FactMirror(database)
    outcomes = [False] * 6 + [True, False, True]
    pauses: list[tuple[float, str]] = []

    async def refresh() -> int:
        if not outcomes.pop(0):
            raise RuntimeError("database down")
        return 0

    async def pause(seconds: float) -> None:
        pauses.append((seconds, mirror.state()))
        if not outcomes:
            mirror._stopping.set()

    monkeypatch.setattr(mirror, "refresh", refresh)
    monkeypatch.setattr(mirror, "_pause", pause)
    mirror.start(poll_seconds=0.25, retry_max_seconds=4)
    await asyncio.wait_for(mirror._task, 10)  # ends once the last outcome's pause stops it
    await mirror.stop()
    assert [seconds for seconds, _ in pauses] == [0.5, 1, 2, 4, 4, 4, 0.25, 0.5, 0.25]
    assert [state for _, state in pauses] == (["not loaded (0 rows so far); last sync failed, retrying"] * 6
                                              + ["ok", "loaded; last sync failed, retrying", "ok"])


async def _record(database: Database, recorder: EventRecorder, built, *, commit: bool = True) -> None:
    """One consumer transaction through the recorder, its after-commit hook called as the runtime does."""
    batch = [decode_event(event.to_json()) for event in built]

    class RolledBack(Exception):
        pass

    try:
        async with database.begin() as connection:
            applied = await recorder.record_events(connection, batch)
            if not commit:
                raise RolledBack
    except RolledBack:
        return
    if applied:
        recorder.committed(list(applied))


def _built(offset: int):
    return [view(f"u-{offset}-{n}", T + timedelta(minutes=n), f"p-{n}", category=name or None, name=name)
            for n, name in enumerate(AWKWARD)] + [
        order(f"u-{offset}-0", T + timedelta(hours=1), f"o-{offset}", [("p-0", 2, "5.00"), ("p-1", 1, "0.01")])]


async def test_the_copy_fed_by_the_consumer_equals_the_stored_facts_with_other_writers_in_between(database_url):
    """The consumer's committed rows go to the copy as they are; rows of another writer (a replica, an
    erasure) between them are read from the database, and so are rows the copy cannot place."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    mirror = FactMirror(database)
    recorder = EventRecorder(mirror)
    try:
        await _record(database, recorder, _built(1))
        assert await mirror.refresh() == len(AWKWARD) + 1  # the first load: nothing stored before this batch
        second = _built(2)
        await _record(database, recorder, second)
        assert len(mirror._written) == 1
        handed_over = mirror.rows_handed_over
        assert await mirror.refresh() == len(AWKWARD) + 1
        # Applied as handed over, not read back from the database.
        assert mirror.rows_handed_over - handed_over == len(AWKWARD) + 1
        assert not mirror._written and _copied(mirror) == await _stored(database)

        # Another replica writes between two of this process's batches; then a batch that rolls back, a batch
        # with events stored before (only the new ones count), and an erasure.
        await _record(database, recorder, _built(3))
        async with database.begin() as connection:
            await store_facts(connection, _events(4))
        await _record(database, recorder, _built(5))
        await _record(database, recorder, _built(6), commit=False)
        await _record(database, recorder, [second[-1], *_built(7), second[0]])  # stored before: not again
        async with database.begin() as connection:
            await pseudonymise_persons(connection, {"u-3-0": "erased:y"})
        await _record(database, recorder, _built(8))
        assert await mirror.refresh() > 0
        assert not mirror._written
        copied = _copied(mirror)
        assert copied == await _stored(database)
        assert len(copied[0]) == 6 * (len(AWKWARD) + 1) + len(AWKWARD) + 4  # batches 1,2,3,5,7,8, 4's facts
        assert len(copied[1]) == 6 * 2 + 2
        assert not any("u-3-0" in row for row in copied[0])
        assert await mirror.refresh() == 0
    finally:
        await mirror.stop()
        await database.close()


def _files(directory) -> list:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*.duckdb"))


def _bytes(directory) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


async def _database_with_events(database_url: str) -> Database:
    """The funnel's database, started, holding ``_events(1)`` (u-1-0's among them)."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    async with database.begin() as connection:
        await store_facts(connection, _events(1))
    return database


def _key_is_in_the_file(mirror: FactMirror, directory) -> None:
    mirror.duckdb.execute("CHECKPOINT")
    assert b"u-1-0" in _bytes(directory), "the key is readable in the file, so its absence below means something"


async def test_a_restart_catches_up_from_its_seq_exactly_and_an_erasure_leaves_no_key_in_the_file(
    database_url, tmp_path
):
    database = await _database_with_events(database_url)
    directory = tmp_path / "copy"
    try:
        mirror = FactMirror(database, directory=directory, memory_limit="64MB")
        loaded = await mirror.refresh()
        assert loaded == len(AWKWARD) + 4
        _key_is_in_the_file(mirror, directory)
        await mirror.stop()

        # While the copy is down: new rows, and an erasure that rewrites rows the file already holds.
        async with database.begin() as connection:
            await store_facts(connection, _events(2))
        async with database.begin() as connection:
            await pseudonymise_persons(connection, {"u-1-0": "erased:x"})

        mirror = FactMirror(database, directory=directory, memory_limit="64MB")
        assert (mirror.seq, mirror.rows) == (loaded, loaded)  # taken up from the file, not reloaded
        # Only what was written while it was down: the new events and the four rewritten ones.
        assert await mirror.refresh() == len(AWKWARD) + 4 + 4
        copied = _copied(mirror)
        assert copied == await _stored(database)
        assert not any("u-1-0" in row for row in copied[0])
        # The erasure compacted the file into a new generation: no block of the old one is left.
        assert _files(directory) == ["slot-0/facts-000002.duckdb"]
        mirror.duckdb.execute("CHECKPOINT")
        assert b"u-1-0" not in _bytes(directory)
        await mirror.stop()

        mirror = FactMirror(database, directory=directory)
        assert await mirror.refresh() == 0
        assert _copied(mirror) == await _stored(database)
        await mirror.stop()
    finally:
        await database.close()


async def test_a_clean_stop_syncs_once_more_so_an_erasure_just_applied_leaves_no_key_in_the_file(
        database_url, tmp_path):
    """The follow polls now and then; an erasure the database applied since its last poll is in the copy's file
    until the next sync. A clean stop syncs once more (the follow here polls only for its first load)."""
    database = await _database_with_events(database_url)
    directory = tmp_path / "copy"
    try:
        mirror = FactMirror(database, directory=directory)
        mirror.start(poll_seconds=3600)
        await eventually(mirror.loaded.is_set, what="the first load")
        _key_is_in_the_file(mirror, directory)
        async with database.begin() as connection:
            await pseudonymise_persons(connection, {"u-1-0": "erased:x"})
        await mirror.stop()
        assert b"u-1-0" not in _bytes(directory)
        assert _files(directory) == ["slot-0/facts-000002.duckdb"]  # compacted into a new generation
    finally:
        await database.close()


async def test_a_corrupt_foreign_or_older_copy_is_rebuilt_from_the_database(database_url, tmp_path):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    directory = tmp_path / "copy"
    total = 2 * (len(AWKWARD) + 4)

    async def reopened() -> FactMirror:
        mirror = FactMirror(database, directory=directory)
        assert await mirror.refresh() == total  # everything loaded again
        assert _copied(mirror) == await _stored(database)
        return mirror

    try:
        for offset in (1, 2):
            async with database.begin() as connection:
                await store_facts(connection, _events(offset))
        mirror = FactMirror(database, directory=directory)
        await mirror.refresh()
        # Another database's copy: its last event_id is not at its seq here.
        mirror.duckdb.execute("UPDATE copy_state SET event_id = 'elsewhere'")
        await mirror.stop()
        mirror = await reopened()
        # A copy written by another version of the service.
        mirror.duckdb.execute("UPDATE copy_state SET version = version + 1")
        await mirror.stop()
        mirror = await reopened()
        # A copy whose persons another DuckDB numbered (its hash of the probe text differs).
        mirror.duckdb.execute("UPDATE copy_state SET hash_probe = hash_probe + 1")
        await mirror.stop()
        mirror = await reopened()
        await mirror.stop()
        # A file that is not a DuckDB database at all.
        (path,) = directory.rglob("*.duckdb")
        path.write_bytes(b"not a database" * 1000)
        mirror = await reopened()
        await mirror.stop()
        # No file.
        for leftover in directory.rglob("*.duckdb*"):
            leftover.unlink()
        mirror = await reopened()
        await mirror.stop()
    finally:
        await database.close()


async def test_copies_running_at_once_on_one_directory_each_take_their_own_slot(database_url, tmp_path):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    directory = tmp_path / "copy"
    try:
        async with database.begin() as connection:
            await store_facts(connection, _events(1))
        one, other = FactMirror(database, directory=directory), FactMirror(database, directory=directory)
        assert (one.directory, other.directory) == (directory / "slot-0", directory / "slot-1")
        assert await one.refresh() == await other.refresh() == len(AWKWARD) + 4
        assert _copied(one) == _copied(other) == await _stored(database)
        await one.stop()
        again = FactMirror(database, directory=directory)  # the slot freed by the stop, with its copy
        assert again.directory == directory / "slot-0" and again.seq > 0
        await other.stop()
        await again.stop()
    finally:
        await database.close()


async def test_a_copy_kept_on_disk_refolds_its_days_when_the_reporting_time_zone_changes(
    database_url, tmp_path, monkeypatch
):
    # Events around midnight UTC, which is 08:00 in Shanghai: their days differ between the two zones.
    monkeypatch.setattr(product_state, "FOLD_ROWS", 1)
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    directory = tmp_path / "copy"
    around_midnight = facts([view(f"u-{n}", T + timedelta(hours=hour), "p-1")
                             for n, hour in enumerate((-9, -1, 1, 9, 23, 25))])
    try:
        async with database.begin() as connection:
            await store_facts(connection, around_midnight)
        mirror = FactMirror(database, directory=directory, time_zone="UTC")
        await mirror.refresh()
        _kpi_state_is_the_fold_of_its_rows(mirror)
        utc_days = mirror.duckdb.execute("SELECT DISTINCT day_start FROM presence ORDER BY 1").fetchall()
        await mirror.stop()

        mirror = FactMirror(database, directory=directory, time_zone="Asia/Shanghai")
        assert mirror.seq > 0  # the file is kept, not reloaded
        assert mirror.duckdb.execute("SELECT time_zone FROM kpi_state").fetchone()[0] == "Asia/Shanghai"
        _kpi_state_is_the_fold_of_its_rows(mirror)
        assert mirror.duckdb.execute("SELECT DISTINCT day_start FROM presence ORDER BY 1").fetchall() != utc_days
        await mirror.stop()
    finally:
        await database.close()
