"""The token bucket rule of ``services/ingest/ratelimit.py`` compiled to one SQL upsert on the ingest's own
database, so every worker process (and, on PostgreSQL, every replica) spends from the same bucket.

Why the database: ingest runs several uvicorn workers (and replicas in production); a bucket per process
gives a key a multiple of its limit. The ingest already owns a database reachable from all of them, and one
upsert per request (not per event) is cheap next to the broker round trip every accepted request waits for
anyway. A row lock (PostgreSQL) or the write lock (SQLite) serialises the spends of one key, so two workers
never both spend the same tokens. Keys are stored as SHA-256 digests: the table holds no secret.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from sqlalchemy import BigInteger, String, Table, bindparam, case, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.columns import primary, required
from libs.common.db import Database, Migration, insert
from services.ingest.adapters.rejected import metadata
from services.ingest.ratelimit import MICRO, Bucket, Rate, retry_after

rate_buckets = Table(
    "rate_buckets", metadata, *primary(key_hash=String(64)), *required(tokens_e6=BigInteger, updated_us=BigInteger),
)


def _create_rate_buckets(connection: Connection) -> None:
    rate_buckets.create(connection, checkfirst=True)


MIGRATION = Migration(3, "rate buckets shared by every ingest worker", _create_rate_buckets)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _spend_statement(connection: AsyncConnection):
    """``take`` as one upsert: a new key's bucket starts full; an existing one is refilled to now, capped at the
    burst, and spent only if it holds the cost (else the row is left alone and nothing is returned)."""
    now = bindparam("now_us", type_=BigInteger)
    cost = bindparam("cost_e6", type_=BigInteger)
    burst = bindparam("burst_e6", type_=BigInteger)
    milli = bindparam("milli", type_=BigInteger)
    full_after = bindparam("full_after_us", type_=BigInteger)
    column = rate_buckets.c
    behind = case((now > column.updated_us, now - column.updated_us), else_=0)
    elapsed = case((behind < full_after, behind), else_=full_after)
    refilled = column.tokens_e6 + elapsed * milli // 1000
    have = case((refilled < burst, refilled), else_=burst)
    statement = insert(connection, rate_buckets).values(key_hash=bindparam("key_hash"), tokens_e6=burst - cost,
                                                         updated_us=now)
    return statement.on_conflict_do_update(
        index_elements=[column.key_hash],
        set_={"tokens_e6": have - cost,
              "updated_us": case((now > column.updated_us, now), else_=column.updated_us)},
        where=have >= cost,
    ).returning(column.tokens_e6)


def _params(key: str, now_us: int, rate: Rate, cost: int) -> dict[str, int | str]:
    return {"key_hash": key_hash(key), "now_us": now_us, "cost_e6": cost * MICRO, "burst_e6": rate.burst_e6,
            "milli": rate.milli_per_second, "full_after_us": rate.full_after_us}


async def spend(connection: AsyncConnection, key: str, now_us: int, rate: Rate, cost: int) -> int:
    """Spend ``cost`` events from the key's shared bucket: 0 if allowed, else the Retry-After in seconds."""
    if cost * MICRO > rate.burst_e6:
        return retry_after(None, now_us, rate, cost)  # never fits; the settings keep requests below the burst
    spent = (await connection.execute(_spend_statement(connection), _params(key, now_us, rate, cost))).first()
    if spent is not None:
        return 0
    return retry_after(await stored_bucket(connection, key), now_us, rate, cost)


async def stored_bucket(connection: AsyncConnection, key: str) -> Bucket | None:
    """The key's bucket as last spent from, or None for a key that has not posted yet."""
    row = (await connection.execute(select(rate_buckets.c.tokens_e6, rate_buckets.c.updated_us)
                                    .where(rate_buckets.c.key_hash == key_hash(key)))).first()
    return None if row is None else Bucket(row.tokens_e6, row.updated_us)


class SharedRateLimiter:
    """Per-key token buckets in the ingest's database, one statement per request."""

    def __init__(self, database: Database, rate: float, burst: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.rate = Rate.of(rate, burst)
        self.clock = clock  # wall clock: the workers and replicas share it, unlike a monotonic one

    async def take(self, key: str, cost: int) -> int:
        """Spend ``cost`` tokens; return 0 if allowed, else whole seconds to wait (the Retry-After)."""
        now_us = int(self.clock() * MICRO)
        async with self.database.begin() as connection:
            return await spend(connection, key, now_us, self.rate, cost)
