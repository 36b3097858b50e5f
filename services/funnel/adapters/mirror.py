"""The funnel's analytical read model: an in-memory DuckDB copy of the stored facts.

The service's database (SQLite or PostgreSQL) stays the system of record: the consumer writes there, in the
transaction that records the event_ids it applied. Answers that aggregate millions of events (distinct
persons per range, chains of funnel steps) are computed by DuckDB, a columnar engine, over a copy of the
``events`` and ``order_items`` tables that follows the database by ``events.seq``:

- every write to ``events`` takes the next ``seq`` values while holding the table's write lock (SQLite's
  database lock; a transaction-scoped advisory lock on PostgreSQL), so transactions commit in ``seq`` order
  and "every row with seq <= N" is a complete prefix once N is visible;
- an erasure rewrites the person's rows with new ``seq`` values and ``revised`` set, so the copy replaces them;
- before each answer the copy applies whatever was committed since its last sync (``FactMirror.refresh``), so
  an answer reflects at least everything committed before the request began; a background task keeps that
  delta small;
- the rows this process's consumer commits are handed over after the commit (``FactMirror.written``) and
  appended as they are when they continue the copy; anything else (another replica's rows, an erasure's) is
  read from the database by seq.

Where it lives: in memory (rebuilt from the database at every start), or, given a directory, in a DuckDB
file there (``facts-<generation>.duckdb``) whose buffer pool is bounded by ``memory_limit``, so the copy's size
is bounded by disk, not RAM. The file keeps, in the transaction of each change, the seq it reaches and the
event_id at that seq (``copy_state``): a restart opens it and catches up from there. It is rebuilt from the
database when it is missing, unreadable, of another ``COPY_SCHEMA_VERSION``, or not a prefix of this database
(its last event_id is not at its seq, nor moved later by an erasure). After an erasure the file is compacted
into a new generation (``COPY FROM DATABASE``) and the old file removed: DuckDB's checkpoint reclaims the
space of deleted rows only in part, so the erased keys would otherwise linger in the file's blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import BigInteger, Boolean, Float, Integer, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database
from services.funnel.adapters.tables import events, order_items
from services.funnel.engine import kpi_state, person_hashes, prior_views, product_state
from services.funnel.settings import MEMORY_SIZE_PATTERN

log = logging.getLogger(__name__)
T = TypeVar("T")

# Advisory lock serializing writers of `events` on PostgreSQL (SQLite's write lock does the same there).
_EVENTS_WRITE_LOCK = 7461_0002
_FETCH_ROWS = 50_000


def _arrow_type(column: Any) -> pa.DataType:
    if isinstance(column.type, BigInteger):
        return pa.int64()
    if isinstance(column.type, Integer):
        return pa.int32()
    if isinstance(column.type, Float):
        return pa.float64()
    if isinstance(column.type, Boolean):
        return pa.bool_()
    return pa.string()


def _schema(table: Table, skip: Sequence[str] = ()) -> pa.Schema:
    return pa.schema([(column.name, _arrow_type(column)) for column in table.c if column.name not in skip])


# What the copy holds: the stored columns, minus the database's own bookkeeping.
_BOOKKEEPING = ("seq", "revised")
EVENTS_SCHEMA = _schema(events, _BOOKKEEPING)
ITEMS_SCHEMA = _schema(order_items)
_DUCKDB_TYPES = {pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE", pa.string(): "VARCHAR",
                 pa.bool_(): "BOOLEAN"}


# The copy's tables and what they hold: a file written under another version is rebuilt, not read.
COPY_SCHEMA_VERSION = 6
_MEMORY_SIZE = re.compile(MEMORY_SIZE_PATTERN)
# copy_state.version while a first load is under way (its steps are committed one by one): never read.
LOADING = -1
# The presence fold's budget per statement in a first load under its own pool (kpi_state.FOLD_BYTES otherwise): at
# 30M events (3M persons) under 256MB, 48 MiB ran out of the pool and 8 MiB completed (peak 614 MB, DuckDB alone).
LOAD_FOLD_BYTES = 8 << 20


def create_tables(connection: duckdb.DuckDBPyConnection, time_zone: str = "UTC") -> None:
    """The copy's tables, named and typed as the service's own (times epoch micros, money integer cents), and the
    state folded from them (per product; for the KPIs, with days of ``time_zone``)."""
    # order_events: the order events again (about a tenth of all), so that the order rules (earliest
    # completed event, refunds) scan them rather than every event.
    # applied: the seq the copy reached with the batch that brought the row (product_state folds up to one).
    # ph: the events' person number (person_hashes.py), computed as they are appended.
    for name, schema in (("events", EVENTS_SCHEMA), ("order_events", EVENTS_SCHEMA), ("order_items", ITEMS_SCHEMA)):
        columns = ", ".join(f"{field.name} {_DUCKDB_TYPES[field.type]}" for field in schema)
        numbered = ", ph UBIGINT" if schema is EVENTS_SCHEMA else ""
        connection.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns}, applied BIGINT{numbered})")
    # Where the copy stands: the last seq it holds, the event_id stored at it then, and the `applied` and time up
    # to which product_state holds the rows (times are >= 0: a horizon of -1 holds none); and how the DuckDB that
    # numbered its persons hashes a fixed text.
    connection.execute(
        "CREATE TABLE IF NOT EXISTS copy_state (version INTEGER, seq BIGINT, event_id VARCHAR, folded BIGINT, "
        "horizon BIGINT, hash_probe UBIGINT)")
    if connection.execute("SELECT count(*) FROM copy_state").fetchone()[0] == 0:  # type: ignore[index]
        connection.execute(f"INSERT INTO copy_state VALUES (?, 0, NULL, 0, -1, {person_hashes.PROBE_SQL})",
                           [COPY_SCHEMA_VERSION])
    product_state.create_state(connection)
    kpi_state.create_state(connection, time_zone)
    person_hashes.create_state(connection)
    prior_views.create_state(connection)


def arrow_batch(schema: pa.Schema, rows: Sequence[Sequence[Any]] | Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (tuples in schema order, or dicts by column name) as one Arrow table."""
    if rows and isinstance(rows[0], dict):
        return pa.Table.from_pylist(list(rows), schema=schema)  # type: ignore[arg-type]
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
    return pa.Table.from_arrays([pa.array(values, type=field.type) for values, field in zip(columns, schema, strict=True)],
                                schema=schema)


def append(connection: duckdb.DuckDBPyConnection, table: str, batch: pa.Table, applied: int) -> None:
    """Append an Arrow batch to one of the copy's tables (events: order events to order_events too), its rows
    marked as ``applied`` at that seq."""
    if not batch.num_rows:
        return
    marked = batch.append_column("applied", pa.array(itertools.repeat(applied, batch.num_rows), pa.int64()))
    # A relation's insert_into: half the CPU of INSERT ... SELECT from a registered view (which runs the scan
    # on both of DuckDB's threads for a few thousand rows).
    rows = connection.from_arrow(marked)
    if table != "order_items":
        rows = rows.project(f"*, {person_hashes.NUMBER} AS ph")
    rows.insert_into(table)
    if table == "events":
        # Filtered in Arrow, not by a second scan of the whole batch in DuckDB (about 3 us per row).
        append(connection, "order_events", batch.filter(pc.is_valid(batch.column("order_status"))), applied)


def fold_state(connection: duckdb.DuckDBPyConnection, top: int, step: Callable[[], None] | None = None,
               fold_bytes: int | None = None, *, prior: bool = True) -> None:
    """Fold the rows applied since the last fold, up to ``top``, into the KPI state, ``prior_views`` and
    ``product_state`` (in the caller's transaction). ``step``: called between the fold's parts (the registry, the
    persons, each chunk of days of presence, the orders, each bucket of prior_views), e.g. to commit a first load in
    pieces; the copy is not read in between.
    ``fold_bytes``: the presence fold's budget per statement (kpi_state.FOLD_BYTES when None). ``prior``: False
    leaves ``prior_views`` to the caller (a first load folds it after committing the rest)."""
    folded = int(connection.execute("SELECT folded FROM copy_state").fetchone()[0])  # type: ignore[index]
    person_hashes.fold(connection, f"e.applied > {folded} AND e.applied <= {int(top)}")
    if step is not None:
        step()
    kpi_state.fold(connection, top, step, fold_bytes)
    if prior:
        prior_views.fold(connection, folded, top, step)
    product_state.fold(connection, top)  # moves copy_state.folded: last


def replace_revised(connection: duckdb.DuckDBPyConnection, batch: pa.Table, revised: list[str]) -> None:
    """Delete the copy's rows that an erasure rewrote (the new versions, in ``batch``, are appended after), the
    persons renamed in the KPI state first (in the caller's transaction)."""
    new_keys = dict(zip(batch.column("event_id").to_pylist(), batch.column("person_key").to_pylist(), strict=True))
    old_keys = connection.execute("SELECT event_id, person_key FROM events WHERE event_id IN (SELECT unnest(?))",
                                  [revised]).fetchall()
    renamed = {old: new_keys[event_id] for event_id, old in old_keys
               if event_id in new_keys and new_keys[event_id] != old}
    kpi_state.rename_persons(connection, renamed)
    person_hashes.forget(connection, list(renamed))
    kpi_state.forget_refunds(connection, revised)
    prior_views.forget(connection, revised)
    for table in ("events", "order_events", "order_items"):
        connection.execute(f"DELETE FROM {table} WHERE event_id IN (SELECT unnest(?))", [revised])


async def next_seq(connection: AsyncConnection, is_sqlite: bool) -> int:
    """The first free ``events.seq``, with the lock that keeps writers of ``events`` in seq order held
    until this transaction ends."""
    if not is_sqlite:
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({_EVENTS_WRITE_LOCK})"))
    # SQLite: the consumer's transaction began IMMEDIATE, so it already holds the database's write lock.
    last = (await connection.execute(select(func.max(events.c.seq)))).scalar()
    return (last or 0) + 1


class FactCopyUnavailable(Exception):
    """The copy cannot answer now: its first load has not finished within the wait, or catching up failed."""


def _reason(error: Exception) -> str:
    """An error in one line, without SQLAlchemy's statement and background link."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass(frozen=True, slots=True)
class _Written:
    """Rows this process committed: seq ``first_seq``..``last_seq``, every row in that range one of them."""

    first_seq: int
    last_seq: int
    event_rows: Sequence[tuple[Any, ...]]
    item_rows: Sequence[tuple[Any, ...]]


class FactMirror:
    """The DuckDB copy and the sync that keeps it a complete prefix of the database by ``events.seq``.

    ``query`` waits at most ``load_wait_seconds`` for the first load, then raises ``FactCopyUnavailable``
    (an unreachable database or a missing table would otherwise hold every request for as long as it lasts)."""

    def __init__(self, database: Database, *, load_wait_seconds: float = 5.0, directory: str | Path | None = None,
                 memory_limit: str | None = None, threads: int = 2, time_zone: str = "UTC",
                 load_memory_limit: str | None = None, retry_memory_limit: str | None = None) -> None:
        self.database = database
        self.time_zone = time_zone  # the reporting time zone: the days of the KPI state
        self.load_wait_seconds = load_wait_seconds
        # Why the last sync failed; None once one succeeds.
        self.failure: str | None = None
        # A process's copy lives in its own slot of the directory (slot-0, slot-1, ...: one per worker or
        # replica sharing the setting), held by an exclusive lock on the slot's lock file while it runs.
        self._slot_lock: Any = None
        self.directory = None if directory is None else self._claim_slot(Path(directory))
        self._config: dict[str, Any] = {"threads": threads}
        if memory_limit is not None:
            self._config["memory_limit"] = memory_limit
        # The first load's buffer pool (PostgreSQL's bulk load; the copy's own after it), and that of its retry in
        # one transaction (None: the copy's own): a SET statement's text, so a size and nothing else. The first is
        # dropped once a load runs out of it.
        for size in (memory_limit, load_memory_limit, retry_memory_limit):
            if size is not None and not _MEMORY_SIZE.fullmatch(size):
                raise ValueError(f"not a memory size: {size!r}")
        self._load_memory_limit = load_memory_limit
        self._retry_memory_limit = retry_memory_limit
        self.generation = 0
        self.seq = 0
        self.folded = 0  # the seq up to which product_state holds the rows
        self.rows = 0
        # The (seq, event_id) a copy kept on disk ends at, to be checked against the database before use.
        self._resumed: tuple[int, str] | None = None
        self.duckdb = self._open()
        # Queries running on the connection, and whether a compaction is waiting to swap it.
        self._readers = 0
        self._readers_changed = threading.Condition()
        self._swapping = False
        self.loaded = asyncio.Event()
        self._lock = asyncio.Lock()
        self._write = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # What this process's consumer committed, not yet in the copy (``written``), and its row count.
        self._written: deque[_Written] = deque()
        self._written_rows = 0
        self._bulk_loaded = self.seq > 0  # a copy kept on disk catches up from its seq
        self.rows_handed_over = 0  # of the rows applied, those the consumer handed over (not read back)

    def _claim_slot(self, root: Path) -> Path:
        """The first slot of ``root`` no other running copy holds, locked for this one."""
        for number in itertools.count():
            slot = root / f"slot-{number}"
            slot.mkdir(parents=True, exist_ok=True)
            handle = open(slot / "lock", "a+")  # held open, and locked, until stop
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._slot_lock = handle
            return slot
        raise AssertionError("unreachable")

    def _path(self, generation: int) -> Path:
        assert self.directory is not None
        return self.directory / f"facts-{generation:06d}.duckdb"

    def _generations(self) -> list[int]:
        assert self.directory is not None
        found = []
        for path in self.directory.glob("facts-*.duckdb"):
            try:
                found.append(int(path.stem.removeprefix("facts-")))
            except ValueError:
                continue
        return sorted(found)

    def _remove(self, generation: int) -> None:
        for suffix in ("", ".wal"):
            Path(f"{self._path(generation)}{suffix}").unlink(missing_ok=True)

    def _open(self) -> duckdb.DuckDBPyConnection:
        """The copy's connection: in memory; or the newest readable file of the directory, of this version
        (its seq and rows taken up), older ones removed; or a new empty file."""
        if self.directory is None:
            connection = duckdb.connect(":memory:", config=self._config)
            create_tables(connection, self.time_zone)
            return connection
        self.directory.mkdir(parents=True, exist_ok=True)
        generations = self._generations()
        newest = generations[-1] if generations else 0
        if generations:
            try:
                connection = duckdb.connect(str(self._path(newest)), config=self._config)
                version, seq, event_id, folded = connection.execute(
                    "SELECT version, seq, event_id, folded FROM copy_state").fetchone()  # type: ignore[misc]
                same_hash = version == COPY_SCHEMA_VERSION and connection.execute(
                    f"SELECT hash_probe = {person_hashes.PROBE_SQL} FROM copy_state").fetchone()[0]  # type: ignore[index]
                if version == COPY_SCHEMA_VERSION and not same_hash:
                    log.warning("fact copy numbered by another DuckDB's hash: rebuilt")
                elif version == COPY_SCHEMA_VERSION:
                    if kpi_state.time_zone_of(connection) != self.time_zone:
                        log.warning("fact copy's days of another time zone: presence refolded",
                                    extra={"time_zone": self.time_zone})
                        connection.execute("BEGIN")
                        kpi_state.rebuild_presence(connection, self.time_zone)
                        connection.execute("COMMIT")
                    self.generation, self.seq, self.folded = newest, seq, folded
                    self.rows = connection.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
                    self._resumed = (seq, event_id) if seq else None
                    for older in generations[:-1]:
                        self._remove(older)
                    log.info("fact copy opened", extra={"path": str(self._path(newest)), "seq": seq, "rows": self.rows})
                    return connection
                connection.close()
                if version == LOADING:
                    log.warning("fact copy left half loaded: rebuilt")
                elif version != COPY_SCHEMA_VERSION:
                    log.warning("fact copy of another version: rebuilt", extra={"version": version})
            except (duckdb.Error, TypeError, ValueError) as exc:
                log.warning("fact copy unreadable: rebuilt", extra={"reason": _reason(exc)})
        for generation in generations:
            self._remove(generation)
        self.generation = newest + 1
        connection = duckdb.connect(str(self._path(self.generation)), config=self._config)
        create_tables(connection, self.time_zone)
        return connection

    async def _check_resumed(self) -> None:
        """A copy kept on disk continues only if it is a prefix of this database: the event_id it ends at is
        at its seq, or was moved later by an erasure (then the copy reads it again). Else it starts over."""
        if self._resumed is None:
            return
        seq, event_id = self._resumed
        async with self.database.read() as connection:
            found = (await connection.execute(
                select(events.c.seq, events.c.revised).where(events.c.event_id == event_id)
            )).first()
        self._resumed = None
        if found is not None and (found.seq == seq or (found.seq > seq and found.revised)):
            return
        log.warning("fact copy is not a prefix of this database: rebuilt", extra={"seq": seq})
        await asyncio.to_thread(self._clear)
        self.seq = self.rows = 0
        self._bulk_loaded = False

    def _clear(self) -> None:
        """An empty copy: a new file (the old one removed), or a new database in memory. (Not the old one emptied:
        a DuckDB error can leave its database invalidated, "must be restarted prior to being used again".)"""
        with self._write:
            self.duckdb.close()
            if self.directory is None:
                self.duckdb = duckdb.connect(":memory:", config=self._config)
            else:
                self._remove(self.generation)
                self.generation += 1
                self.duckdb = duckdb.connect(str(self._path(self.generation)), config=self._config)
            create_tables(self.duckdb, self.time_zone)
            self.folded = 0

    def _compact(self) -> None:
        """The file copied into a new generation and the old one removed, so that no block of the file holds
        rows an erasure replaced (a checkpoint reclaims deleted rows' space only in part)."""
        old, old_generation = self.duckdb, self.generation
        path = self._path(old_generation + 1)
        self._remove(old_generation + 1)
        with self._write:
            name = old.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            # ATTACH takes no parameters; the path is the service's own setting, quoted as an SQL string.
            old.execute("ATTACH '{}' AS compacted".format(str(path).replace("'", "''")))
            try:
                old.execute(f'COPY FROM DATABASE "{name}" TO compacted')
            finally:
                old.execute("DETACH compacted")
            fresh = duckdb.connect(str(path), config=self._config)
            with self._readers_changed:
                self._swapping = True
                self._readers_changed.wait_for(lambda: self._readers == 0)
                self.duckdb, self.generation = fresh, old_generation + 1
                self._swapping = False
                self._readers_changed.notify_all()
        old.close()
        self._remove(old_generation)

    async def _bulk_load(self) -> int:
        """PostgreSQL: the first load as two COPYs to CSV read by DuckDB (a per-row fetch of millions of rows
        would take minutes). Loads every row up to the seq seen at the start; ``refresh`` goes on from there."""
        async with self.database.read() as connection:
            top = (await connection.execute(select(func.max(events.c.seq)))).scalar()
            if top is None:
                return 0
            top_event = (await connection.execute(select(events.c.event_id).where(events.c.seq == top))).scalar_one()
            driver = (await connection.get_raw_connection()).driver_connection
            with tempfile.TemporaryDirectory(prefix="shoploop-funnel-copy-") as directory:
                paths = {name: Path(directory, f"{name}.csv") for name in ("events", "order_items")}
                event_columns = ", ".join(field.name for field in EVENTS_SCHEMA)
                item_columns = ", ".join(f"i.{field.name}" for field in ITEMS_SCHEMA)
                await driver.copy_from_query(f"SELECT {event_columns} FROM events WHERE seq <= {int(top)}",
                                             output=str(paths["events"]), format="csv")
                await driver.copy_from_query(
                    f"SELECT {item_columns} FROM order_items i JOIN events e ON e.event_id = i.event_id "
                    f"WHERE e.seq <= {int(top)}", output=str(paths["order_items"]), format="csv")
                await asyncio.to_thread(self._load_csv, paths, top, top_event)
        self.seq = self.folded = top
        self.rows = self.duckdb.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
        return self.rows

    def _load_csv(self, paths: dict[str, Path], top: int, top_event: str) -> None:
        """The rows and their fold. Under ``load_memory_limit``, committed in steps (the rows, then each part of
        their fold): one transaction's commit of it all held ~300 MB more than the load itself at 10M events (the
        fold's bitstrings), the process's peak. Until its last step the copy's version is ``LOADING``: a process
        stopped half way leaves a file ``_open`` rebuilds, and a load that fails is emptied for the retry. One that
        fails in DuckDB drops that pool, and the retry loads in one transaction under ``retry_memory_limit`` (then
        ``prior_views`` in a second, see ``_load``): at 30M events the steps under 256MB ran out of it (OutOfMemory),
        or their commit's checkpoint did, which invalidates the database (FatalException), where one transaction
        under 512MB completes."""
        stepped = self._load_memory_limit is not None
        limit = self._load_memory_limit if stepped else self._retry_memory_limit
        try:
            with self._write:
                if limit is not None:
                    self.duckdb.execute(f"SET memory_limit = '{limit}'")
                self._load(paths, top, top_event, stepped=stepped)
                if limit is not None:
                    own = self._config.get("memory_limit")
                    self.duckdb.execute(f"SET memory_limit = '{own}'" if own is not None else "RESET memory_limit")
        except BaseException as exc:
            # (_clear's new database has the copy's own pool.)
            if stepped and isinstance(exc, duckdb.Error):
                log.warning("fact copy's first load in steps under its load memory limit failed: retried in one "
                            "transaction", extra={"load_memory_limit": limit,
                                                  "retry_memory_limit": self._retry_memory_limit,
                                                  "reason": _reason(exc)})
                self._load_memory_limit = None
            self._clear()
            raise

    def _load(self, paths: dict[str, Path], top: int, top_event: str, *, stepped: bool) -> None:
        connection = self.duckdb

        def step() -> None:
            connection.execute("COMMIT")
            connection.execute("BEGIN")

        connection.execute("BEGIN")
        try:
            connection.execute("UPDATE copy_state SET version = ?", [LOADING])
            for name, schema in (("events", EVENTS_SCHEMA), ("order_items", ITEMS_SCHEMA)):
                if paths[name].stat().st_size == 0:
                    continue  # no rows (e.g. no order yet): DuckDB cannot sniff an empty file
                columns = {field.name: _DUCKDB_TYPES[field.type] for field in schema}
                # PostgreSQL's CSV: NULL is an empty unquoted field, an empty string is "".
                numbered = f", {person_hashes.NUMBER}" if name == "events" else ""
                connection.execute(
                    f"INSERT INTO {name} SELECT *, ?{numbered} FROM read_csv(?, columns = ?, header = false, "
                    "quote = '\"', escape = '\"', allow_quoted_nulls = false, nullstr = '')",
                    [top, str(paths[name]), columns],
                )
            connection.execute("INSERT INTO order_events SELECT * FROM events WHERE order_status IS NOT NULL")
            connection.execute("UPDATE copy_state SET seq = ?, event_id = ?", [top, top_event])
            if stepped:
                step()
                fold_state(connection, top, step, LOAD_FOLD_BYTES)
            else:
                # prior_views once the rest is committed: its ASOF JOINs over the rows of this one uncommitted
                # transaction spilled 1.7 GB and ran for over ten minutes at 30M events (its second bucket of 15),
                # where over committed rows they take seconds. The copy stays LOADING until the end.
                fold_state(connection, top, prior=False)
                step()
                prior_views.fold(connection, 0, top)
            connection.execute("UPDATE copy_state SET version = ?", [COPY_SCHEMA_VERSION])
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # an invalidated database refuses it; _clear replaces it
                connection.execute("ROLLBACK")
            raise

    def written(self, first_seq: int, last_seq: int, event_rows: Sequence[tuple[Any, ...]],
                item_rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows this process has just committed (the consumer's after-commit): ``events`` rows in table column
        order without seq and revised, which took seq ``first_seq``..``last_seq`` (every row in that range is
        one of them), and their ``order_items`` rows. The next ``refresh`` appends them as they are when the
        copy then ends at ``first_seq - 1``; otherwise (rows of another replica or an erasure in between) it
        reads the database as usual, and drops them once it has read past them."""
        if last_seq < first_seq:
            return
        self._written.append(_Written(first_seq, last_seq, event_rows, item_rows))
        self._written_rows += len(event_rows)
        while self._written_rows > _FETCH_ROWS:  # the follow is far behind or failing: it reads them later
            self._written_rows -= len(self._written.popleft().event_rows)

    def _take_written(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
        """The written rows that continue the copy from ``seq + 1`` without a gap, taken off the queue (rows the
        copy has read from the database already are dropped); and the seq the copy reaches with them."""
        rows: list[tuple[Any, ...]] = []
        items: list[tuple[Any, ...]] = []
        top = self.seq
        while self._written:
            head = self._written[0]
            if head.first_seq > top + 1:
                break  # rows written by someone else come first: the database has them
            self._written.popleft()
            self._written_rows -= len(head.event_rows)
            if head.last_seq <= top:
                continue
            if head.first_seq <= top:  # read from the database in part (a read stops at _FETCH_ROWS)
                self._written.clear()
                self._written_rows = 0
                break
            rows.extend(head.event_rows)
            items.extend(head.item_rows)
            top = head.last_seq
        return rows, items, top

    async def refresh(self) -> int:
        """Apply every committed row with a higher seq than the copy's; the number of rows applied."""
        async with self._lock:
            applied = 0
            await self._check_resumed()
            if not self._bulk_loaded and not self.database.is_sqlite:
                applied = await self._bulk_load()
                # Once, at start: later rows (an empty database's first ones too) are followed row by row.
                self._bulk_loaded = True
            while True:
                own, own_items, own_top = self._take_written()
                if own:
                    await asyncio.to_thread(self._apply, own, own_items, [], own_top)
                    self.seq = own_top
                    self.rows += len(own)
                    self.rows_handed_over += len(own)
                    applied += len(own)
                async with self.database.read() as connection:
                    rows = (await connection.execute(
                        select(events).where(events.c.seq > self.seq).order_by(events.c.seq).limit(_FETCH_ROWS)
                    )).all()
                    if not rows:
                        break
                    top = rows[-1].seq
                    items = (await connection.execute(
                        select(order_items).join(events, events.c.event_id == order_items.c.event_id)
                        .where(events.c.seq > self.seq, events.c.seq <= top, events.c.order_status.is_not(None))
                    )).all()
                revised = [row.event_id for row in rows if row.revised]
                await asyncio.to_thread(self._apply, [tuple(row[:-2]) for row in rows], [tuple(row) for row in items],
                                        revised, top)
                self.seq = top
                self.rows += len(rows) - len(revised)
                applied += len(rows)
                if revised and self.directory is not None:
                    await asyncio.to_thread(self._compact)
            return applied

    def _apply(self, rows: Sequence[tuple[Any, ...]], items: Sequence[tuple[Any, ...]], revised: list[str],
               top: int) -> None:
        """Append rows (replacing the revised ones), with the seq they reach: ``top``, the last row's."""
        batch, item_batch = arrow_batch(EVENTS_SCHEMA, rows), arrow_batch(ITEMS_SCHEMA, items)
        with self._write:
            connection = self.duckdb
            connection.execute("BEGIN")
            try:
                if revised:
                    # Rows rewritten by an erasure: the new version replaces the copy's.
                    replace_revised(connection, batch, revised)
                append(connection, "events", batch, top)
                append(connection, "order_items", item_batch, top)
                connection.execute("UPDATE copy_state SET seq = ?, event_id = ?", [top, rows[-1][0]])
                # Queries read the rows applied since the last fold beside the state: fold them now and then.
                fold = top - self.folded >= product_state.FOLD_ROWS
                if fold:
                    fold_state(connection, top)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            if fold:
                self.folded = top

    def state(self) -> str:
        """The copy's state in words: ``ok``, still loading, or why the last sync failed."""
        if self.failure is not None:
            done = "loaded" if self.loaded.is_set() else f"not loaded ({self.rows} rows so far)"
            return f"{done}; last sync failed, retrying"  # why is in the log (unauthenticated answer)
        return "ok" if self.loaded.is_set() else f"loading ({self.rows} rows so far)"

    async def query(self, compute: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Bring the copy up to what is committed now, then run ``compute`` on it in a worker thread; raises
        ``FactCopyUnavailable`` if the first load has not finished within ``load_wait_seconds`` or the
        catch-up fails."""
        try:
            await asyncio.wait_for(self.loaded.wait(), self.load_wait_seconds)
        except TimeoutError:
            raise FactCopyUnavailable(f"the fact copy is {self.state()}") from None
        try:
            await self.refresh()
        except Exception as exc:
            self.failure = _reason(exc)
            log.exception("fact copy catch-up before an answer failed")
            raise FactCopyUnavailable("the fact copy could not catch up with the database") from exc

        def run() -> T:
            with self._readers_changed:
                self._readers_changed.wait_for(lambda: not self._swapping)
                self._readers += 1
                cursor = self.duckdb.cursor()
            try:
                return compute(cursor)
            finally:
                cursor.close()
                with self._readers_changed:
                    self._readers -= 1
                    self._readers_changed.notify_all()

        return await asyncio.to_thread(run)

    def start(self, poll_seconds: float = 0.25, retry_max_seconds: float = 60.0) -> None:
        """Load the copy, then follow the database in the background, every ``poll_seconds``; after a failure
        the pause doubles, up to ``retry_max_seconds`` (a failed first load would otherwise export every row
        again at each poll: minutes at 30M events)."""
        self._task = asyncio.create_task(self._follow(poll_seconds, retry_max_seconds), name="funnel-mirror")

    async def _follow(self, poll_seconds: float, retry_max_seconds: float) -> None:
        started = time.perf_counter()
        pause = poll_seconds
        while not self._stopping.is_set():
            try:
                await self.refresh()
                self.failure = None
                pause = poll_seconds
                if not self.loaded.is_set():
                    self.loaded.set()
                    log.info("fact copy loaded", extra={"rows": self.rows,
                                                         "seconds": round(time.perf_counter() - started, 2)})
            except Exception as exc:
                self.failure = _reason(exc)
                pause = min(pause * 2, max(retry_max_seconds, poll_seconds))
                log.exception("fact copy sync failed; retrying", extra={"retry_in_seconds": pause})
            # Not woken by each commit of the consumer: on PostgreSQL that cost ~8% of the consumer's rate
            # (bench/funnel.py), and a query applies what was handed over before it answers anyway.
            await self._pause(pause)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` between two syncs, or until ``stop``."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def stop(self) -> None:
        """Stop following, after one last sync of a loaded copy: a clean stop leaves the copy as the database is,
        so an erasure applied since the last poll is compacted out of the file now, not at the next start."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            if self.loaded.is_set():
                try:
                    await self.refresh()
                except Exception:
                    log.exception("fact copy's last sync before stopping failed")
        self.duckdb.close()
        if self._slot_lock is not None:
            self._slot_lock.close()  # releases the slot for the next start
            self._slot_lock = None
