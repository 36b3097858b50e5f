"""Async database access for SQLite (aiosqlite, embedded default) and PostgreSQL (asyncpg).

One URL setting picks the backend. Schema changes are ordered, numbered steps recorded in
``schema_migrations``; each is SQLAlchemy Core, so the same step runs on both databases.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    bindparam,
    cast,
    event,
    func,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from libs.common.copied_rows import stage_rows, staging_table

log = logging.getLogger(__name__)

# Advisory lock keys (any 64-bit numbers, fixed so that every process agrees on them).
_CREATE_DATABASE_LOCK = 7461000
_MIGRATION_LOCK = 7461001

# Every service's metadata includes these two tables (see ``service_metadata``).
SCHEMA_MIGRATIONS = "schema_migrations"
PROCESSED_EVENTS = "processed_events"


def service_metadata() -> MetaData:
    """A MetaData holding the tables the common runtime needs in every service database."""
    metadata = MetaData()
    Table(
        PROCESSED_EVENTS,
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(256), primary_key=True),
    )
    Table(
        SCHEMA_MIGRATIONS,
        metadata,
        Column("version", Integer, primary_key=True),
        Column("name", String(200), nullable=False),
        Column("applied_at", DateTime(timezone=True), server_default=text("CURRENT_TIMESTAMP")),
    )
    return metadata


@dataclass(frozen=True)
class Migration:
    """One schema step; ``apply`` runs on a sync connection inside the migration transaction."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def create_all(metadata: MetaData) -> Callable[[Connection], None]:
    """The usual first migration: create the tables of ``metadata``."""
    return lambda connection: metadata.create_all(connection)


def insert(connection: AsyncConnection | Connection, table: Table) -> Any:
    """An INSERT supporting ``on_conflict_do_nothing/update`` on whichever backend is connected."""
    dialect = connection.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


class BulkRows:
    """Many rows of ``table`` (tuples in ``columns`` order) bound as one value, for a batch write that is one
    statement: PostgreSQL ``unnest()``s one typed array per column, SQLite ``json_each()``es one JSON array of
    rows. Neither does per-row work in Python or SQLAlchemy, and ``RETURNING`` works on both (an executemany
    gives it on neither). Values must be JSON-able: str, int, float, bool, None.

    ``insert(dialect)`` is ``INSERT INTO table (columns) SELECT ...``, ready for ``on_conflict_*`` and
    ``returning``; build it once and execute it with ``params(dialect, rows)``.

    ``copied=True`` (for batches of thousands of rows on a consumer's hot path): on PostgreSQL the statement reads
    the rows from a temporary table they are ``COPY``ed into first (libs/common/copied_rows.py: asyncpg encodes
    arrays at some 0.3 us per string element, a COPY at a fraction of that); execute it with
    ``await bind(connection, rows)``, which copies them and gives the (no) parameters. SQLite as without.
    """

    def __init__(self, table: Table, columns: Sequence[str], *, copied: bool = False) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.copied = copied

    def select(self, dialect: str) -> Select[Any]:
        if dialect == "postgresql" and self.copied:
            staged = sql_table(staging_table(self.table.name), *(sql_column(name) for name in self.columns))
            return select(*(staged.c[name] for name in self.columns))
        if dialect == "postgresql":
            arrays = [bindparam(f"c{n}", type_=postgresql.ARRAY(self.table.c[name].type))
                      for n, name in enumerate(self.columns)]
            rows = func.unnest(*arrays).table_valued(*self.columns).render_derived()
            return select(*(rows.c[name] for name in self.columns))
        each = func.json_each(bindparam("rows")).table_valued("value")
        # WHERE true: SQLite needs it to parse an upsert whose rows come from a SELECT.
        return select(*(func.json_extract(each.c.value, f"$[{n}]") for n in range(len(self.columns)))).where(true())

    def insert(self, dialect: str) -> Any:
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        return dialect_insert(self.table).from_select(self.columns, self.select(dialect))

    def params(self, dialect: str, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        if dialect == "postgresql":
            if not rows:
                return {f"c{n}": [] for n in range(len(self.columns))}
            return {f"c{n}": list(column) for n, column in enumerate(zip(*rows, strict=True))}
        return {"rows": orjson.dumps(rows).decode()}

    async def bind(self, connection: AsyncConnection, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """The parameters of ``insert``'s statement for ``rows``; with ``copied``, on PostgreSQL, the rows copied
        to the temporary table it reads (in the connection's transaction) and no parameters."""
        dialect = connection.dialect.name
        if dialect == "postgresql" and self.copied:
            await stage_rows(connection, self.table.name, self.columns, rows)
            return {}
        return self.params(dialect, rows)


# For a service whose consumer adds every event to several B-trees at scattered places: a 64 MiB page cache per
# connection (the default is 2 MiB) keeps their inner pages in memory, and checkpointing every 10,000 WAL pages
# (40 MiB, not 4) copies a page written by many batches back to the file once, not per batch.
WRITE_HEAVY_SQLITE_PRAGMAS = ("cache_size=-65536", "wal_autocheckpoint=10000")

# Python's sqlite3 binds int, float and str parameters directly, but runs None and bool (and every other type)
# through its adapter lookup, which without a registered adapter costs two failed attribute lookups per value,
# holding the GIL: about 0.4 us per NULL at load 6, some 5 us of a funnel event's row (a dozen NULL columns). A
# registered adapter is one dict hit and one C call; these give the values sqlite3 would bind anyway (NULL; a
# bool as the integer 0 or 1), so only the lookup changes. Process-wide, as sqlite3's adapter registry is.
sqlite3.register_adapter(type(None), {}.get)
sqlite3.register_adapter(bool, int)

# busy_timeout first: switching a new file to WAL takes a lock another process starting at once may hold.
# secure_delete: deleted and overwritten content is zeroed in the page (and so in the WAL frame that carries it), so
# that an erased person's data is not left in free space of the file (SPEC.md "Customers": erasure).
_SQLITE_PRAGMAS = ("busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "secure_delete=ON")


def _sqlite_pragmas(extra: Sequence[str]) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite opens transactions lazily and not for SELECT; take control so BEGIN means BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (*_SQLITE_PRAGMAS, *extra):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return on_connect


_READ_ONLY = "shoploop_read_only"


def _sqlite_begin(connection: Any) -> None:
    # Writers: IMMEDIATE takes the write lock at BEGIN, so two writers queue instead of failing
    # mid-transaction. Readers: a plain BEGIN, so API queries never hold up the consumer (WAL).
    options = connection.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return  # statements that must run outside a transaction (a checkpoint)
    read_only = options.get(_READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """An engine plus the service's schema steps; ``begin()`` is the unit of work. ``sqlite_pragmas`` are run on
    every new SQLite connection after the shared ones (e.g. a bigger page cache for a write-heavy service)."""

    def __init__(self, url: str, *, metadata: MetaData, migrations: Sequence[Migration], pool_size: int = 10,
                 sqlite_pragmas: Sequence[str] = ()):
        self.url = make_url(url)
        self.metadata = metadata
        self.migrations = sorted(migrations, key=lambda migration: migration.version)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # hide_parameters: errors (logged, dead-letter headers) never carry bound values, i.e. personal data.
        options: dict[str, Any] = {"hide_parameters": True}
        if not self.is_sqlite:
            options |= {"pool_size": pool_size, "max_overflow": pool_size, "pool_pre_ping": True}
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas(sqlite_pragmas))
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)

    async def start(self) -> None:
        """Create the database if missing (file directory or PostgreSQL database), then migrate."""
        await self._ensure_exists()
        async with self.engine.begin() as connection:
            await connection.run_sync(self._migrate)

    async def close(self) -> None:
        """Close every connection; on SQLite first copy the WAL into the database file and truncate it, so that a
        clean stop leaves one self-contained file (and no older page versions in a -wal beside it)."""
        if self.is_sqlite:
            try:
                await self._checkpoint()
            except Exception:
                log.exception("checkpoint at close failed; the WAL is applied at the next open")
        await self.engine.dispose()

    async def scrub(self, tables: Sequence[str]) -> None:
        """After personal data was deleted or overwritten (and committed): leave no older copy of it in the
        database's files. SQLite: with secure_delete on, the pages as committed are zeroed where the data was;
        a truncating checkpoint writes them over the file's old pages and empties the WAL. PostgreSQL: VACUUM the
        tables, so their dead row versions are removed (what else PostgreSQL needs: docs/operations.md)."""
        if self.is_sqlite:
            await self._checkpoint()
            return
        async with self.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            quote = autocommit.dialect.identifier_preparer.quote
            for table in tables:
                await autocommit.exec_driver_sql(f"VACUUM {quote(table)}")  # names from our metadata, not input

    async def _checkpoint(self, attempts: int = 3) -> None:
        """PRAGMA wal_checkpoint(TRUNCATE), retried while readers still hold older snapshots."""
        for _ in range(attempts):
            async with self.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                busy, _frames, _copied = (await autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
            if not busy:
                return
            await asyncio.sleep(0.1)
        log.warning("WAL checkpoint could not complete: readers held older snapshots",
                    extra={"database": self.url.database})

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection for queries (SQLite reads do not take the write lock). With ``snapshot``, every query sees
        the database as the first one did (PostgreSQL: REPEATABLE READ; a SQLite read transaction always does)."""
        async with self.engine.connect() as connection:
            options: dict[str, Any] = {_READ_ONLY: True}
            if snapshot and not self.is_sqlite:
                options["isolation_level"] = "REPEATABLE READ"
            yield await connection.execution_options(**options)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def _ensure_exists(self) -> None:
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            return
        import asyncpg

        name = self.url.database
        admin = await asyncpg.connect(
            host=self.url.host, port=self.url.port or 5432, user=self.url.username,
            password=self.url.password, database="postgres",
        )
        try:
            # Every process of every replica may get here at once on a first start: one creates, the others
            # wait on the lock and then find the database. The lock is the cluster's (pg_advisory_lock on the
            # "postgres" database), released when this connection closes whatever happens.
            await admin.execute("SELECT pg_advisory_lock($1)", _CREATE_DATABASE_LOCK)
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Identifiers cannot be bound as parameters; quote_ident-style escaping keeps it data.
                quoted = '"' + str(name).replace('"', '""') + '"'
                try:
                    await admin.execute(f"CREATE DATABASE {quoted}")
                    log.info("created database", extra={"database": name})
                except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                    # Created meanwhile by a process not taking the lock (an older version, an operator):
                    # two concurrent CREATE DATABASE collide on pg_database's unique index.
                    pass
        finally:
            await admin.close()

    def _migrate(self, connection: Connection) -> None:
        # Replicas starting together must not run the same step twice: they queue on a lock held until the
        # migration transaction ends (PostgreSQL: an advisory lock; SQLite: the write lock BEGIN IMMEDIATE took,
        # see _sqlite_begin), and each reads what is applied only once it holds it.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        service_metadata().create_all(connection)
        migrations = service_metadata().tables[SCHEMA_MIGRATIONS]
        done = set(connection.execute(select(migrations.c.version)).scalars())
        for migration in self.migrations:
            if migration.version in done:
                continue
            migration.apply(connection)
            connection.execute(migrations.insert().values(version=migration.version, name=migration.name))
            log.info("applied schema migration", extra={"version": migration.version, "migration": migration.name})


_PROCESSED = service_metadata().tables[PROCESSED_EVENTS]


async def claim_events(connection: AsyncConnection, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Record ``(consumer, event_id)`` rows; return the ids not seen before (the database rejects the rest)."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    statement = (
        insert(connection, _PROCESSED)
        .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        .returning(_PROCESSED.c.event_id)
    )
    # executemany with RETURNING: SQLAlchemy batches it ("insertmanyvalues") from one cached compilation,
    # about 4x cheaper per event than compiling a multi-row VALUES statement per batch.
    result = await connection.execute(statement, [{"consumer": consumer, "event_id": i} for i in ids])
    return set(result.scalars())


async def hold_write_lock(connection: AsyncConnection, key: int) -> None:
    """Serialise this transaction with every other that takes ``key``, until it ends: PostgreSQL takes a
    transaction-scoped advisory lock (each later statement reads what the previous holder committed); SQLite's
    writers already hold the database's write lock from BEGIN IMMEDIATE (``_sqlite_begin``)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


# Sums of money in integer cents. One amount fits 64 bits (SPEC.md "Events" caps it), a person's or a day's total
# need not: SQLite's SUM fails past 2^63 ("integer overflow") and PostgreSQL's numeric sum no longer casts to
# bigint. So each amount is split at bit 32 and the halves are summed apart (each sum stays far inside 64 bits
# for any number of rows a table can hold), then the low sum's carry moves up: the pair (high, low), low < 2^32,
# orders and compares exactly like the whole total, on both databases, and Python joins it (``wide_total``).
_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1


def wide_sum(cents: Any) -> tuple[Any, Any]:
    """``sum(cents)`` of non-negative integers as the exact pair ``(high, low)`` of SQL expressions (NULL over
    no rows): the total is ``high * 2^32 + low``."""
    mask = literal(_LOW_MASK, BigInteger)
    shift = literal(_LOW_BITS, Integer)  # PostgreSQL shifts a bigint by an integer
    high = cast(func.sum(cents.op(">>")(shift)), BigInteger)
    low = cast(func.sum(cents.op("&")(mask)), BigInteger)
    return high + low.op(">>")(shift), low.op("&")(mask)


def wide_at_least(high: Any, low: Any, threshold: int) -> Any:
    """SQL: the total of a ``wide_sum`` pair is >= ``threshold`` (an integer >= 0)."""
    return or_(high > threshold >> _LOW_BITS, and_(high == threshold >> _LOW_BITS, low >= threshold & _LOW_MASK))


def wide_total(high: int | None, low: int | None) -> int | None:
    """The total a ``wide_sum`` pair stands for (None over no rows)."""
    return None if high is None else (int(high) << _LOW_BITS) + int(low or 0)


# Bounded IN lists keep every statement well under SQLite's bound-parameter limit.
CHUNK = 900


def chunks(values: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    """``values`` in lists of at most ``size``."""
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def cents(amount: Decimal | None) -> int | None:
    """Money (at most 2 decimals, SPEC.md "Events") as exact integer cents: how every service stores it."""
    return None if amount is None else int(amount.scaleb(2))


def bytewise(dialect: str, column: Any) -> Any:
    """``column`` compared in code-point order (SPEC ties are broken by event_id): PostgreSQL's default collation
    is not that."""
    return column.collate("C") if dialect == "postgresql" else column
