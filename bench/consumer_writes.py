"""The consumers' batch writes alone, without broker or service process: CPU per event of this process and of
the PostgreSQL server process it talks to (from /proc), per database. Not a test.

The records are bench/common.py's realistic mix as ingest publishes them, decoded as each consumer decodes them,
written in batches of 5,000 (the consumers' ``max_batch``) with the consumer's own handler, each batch in one
transaction, into a new database (a SQLite file; a temporary PostgreSQL database, dropped afterwards). Every event
is new, as in a consumer catching up. Use it to compare write paths A/B (``git stash`` or two worktrees), back to
back: it leaves out the broker, the decode and the DuckDB copy, so the write's share is not drowned in them.

Run: ``python bench/consumer_writes.py --consumer funnel --events 100000`` (about 20 s per database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from libs.common.db import Database  # noqa: E402


def _consumer(name: str):  # type: ignore[no-untyped-def]
    """(metadata, migrations, decode, handle) of one consumer."""
    if name == "funnel":
        from services.funnel.adapters.tables import MIGRATIONS, metadata
        from services.funnel.decoding import decode_event
        from services.funnel.handlers import record_events
        return metadata, MIGRATIONS, decode_event, record_events
    from services.segmentation.adapters.migrations import MIGRATIONS as SEGMENTATION_MIGRATIONS
    from services.segmentation.adapters.tables import metadata as segmentation_metadata
    from services.segmentation.decoding import decode_event as decode_customer_event
    from services.segmentation.handlers import record_customer_facts
    return segmentation_metadata, SEGMENTATION_MIGRATIONS, decode_customer_event, record_customer_facts


async def _server_pid(database: Database) -> int | None:
    if database.is_sqlite:
        return None
    async with database.read() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        return int(await raw.fetchval("SELECT pg_backend_pid()"))


async def run(args: argparse.Namespace, kind: str, workdir: Path) -> str:
    metadata, migrations, decode, handle = _consumer(args.consumer)
    records = common.published_records(args.events, datetime.now(UTC), args.persons)
    decoded = [decode(value) for _, value in records]
    batches = [decoded[start:start + args.batch] for start in range(0, len(decoded), args.batch)]
    async with common.new_database(kind, workdir, f"writes_{args.consumer}") as url:
        # One connection, so that one server process does every write (its CPU read from /proc).
        database = Database(url, metadata=metadata, migrations=migrations, pool_size=1)
        await database.start()
        try:
            server = await _server_pid(database)
            before = time.process_time(), common.cpu_of(server) if server else 0.0, time.perf_counter()
            for batch in batches:
                async with database.begin() as connection:
                    await handle(connection, batch)
            after = time.process_time(), common.cpu_of(server) if server else 0.0, time.perf_counter()
        finally:
            await database.close()
    service_us = (after[0] - before[0]) / len(decoded) * 1e6
    server_us = ((after[1] or 0.0) - (before[1] or 0.0)) / len(decoded) * 1e6
    load = os.getloadavg()[0]
    return (f"{args.consumer} {kind}: {service_us:.1f} + {server_us:.1f} µs CPU per event (this process + server), "
            f"{len(decoded) / (after[2] - before[2]):,.0f} events/s, load {load:.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumer", choices=("funnel", "segmentation"), default="funnel")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--persons", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoploop-bench-writes-") as workdir:
        for kind in args.databases.split(","):
            print(await run(args, kind, Path(workdir)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
