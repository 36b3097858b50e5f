"""The channels' viewers per (day, source) in the KPI state (``source_presence`` bitstrings and ``source_viewers``
id rows, services/funnel/engine/kpi_state.py), in DuckDB alone. Not a test.

Builds a DuckDB copy as bench/funnel_kpi_state.py does (``--events`` events of ``--persons`` persons over 90 days,
generated in DuckDB, folded as the first load does) with the bench's six sources or a long tail of ``--sources``
(``tail-<n>``, every one on every day), then prints: the first fold's time and the process's peak resident memory,
the state's rows and bytes (DuckDB's storage info: the blocks of each table, and the bitstrings' bytes, which
DuckDB keeps in blocks of their own), the copy's file size, and the channels
query over the last 30 days (``--runs`` runs after a warm-up, p50 and max).

Run: ``python bench/funnel_source_presence.py --events 3000000 --persons 300000 --sources 500``. With
``SHOPLOOP_ROOT=<another checkout>`` it runs that checkout's engine (A/B).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("SHOPLOOP_ROOT", HERE.parent))
sys.path.insert(0, str(ROOT))

# The engine first (from ROOT), then this checkout's builder (which finds the engine's modules already imported).
from services.funnel.adapters import mirror  # noqa: E402, F401
from services.funnel.engine.channels import channel_metrics  # noqa: E402

_spec = importlib.util.spec_from_file_location("kpi_state_bench", HERE / "funnel_kpi_state.py")
_builder = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_builder)  # type: ignore[union-attr]
END, build, timed = _builder.END, _builder.build, _builder.timed


def resident_megabytes(field: str = "VmRSS") -> float:
    """This process's resident memory (Linux /proc; ``VmHWM`` for its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table_bytes(connection: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int]:
    """(rows, bytes of the blocks holding them) of a table of the copy, 0s when the engine has no such table."""
    if not connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0]:  # type: ignore[index]
        return 0, 0
    rows = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
    blocks = connection.execute(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{table}') "
                                "WHERE block_id >= 0").fetchone()[0]  # type: ignore[index]
    overflow = connection.execute("SELECT sum(length(bits::VARCHAR)) // 8 FROM source_presence").fetchone()[0] \
        if table == "source_presence" else 0
    block_size = connection.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]  # type: ignore[index]
    return int(rows), int(blocks) * int(block_size) + int(overflow or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--persons", type=int, default=300_000)
    parser.add_argument("--sources", type=int, default=0, help="a long tail of this many sources (0: the bench's six)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoploop-bench-presence-") as directory:
        path = Path(directory, "copy.duckdb")
        with duckdb.connect(str(path), config={"threads": 2, "memory_limit": "512MB"}) as connection:
            began = time.perf_counter()
            build(connection, args.events, args.persons, args.sources)
            rows.append(("build and first fold", f"{time.perf_counter() - began:.1f} s, peak resident "
                         f"{resident_megabytes('VmHWM'):,.0f} MB"))
            for table in ("source_presence", "source_viewers", "presence"):
                count, size = table_bytes(connection, table)
                rows.append((f"{table}", f"{count:,} rows, ~{size / 1e6:,.1f} MB"))
            days = connection.execute("SELECT count(DISTINCT day_start) FROM presence").fetchone()[0]  # type: ignore[index]
            rows.append(("(day, source)s of views", f"{days:,} days x "
                         f"{connection.execute('SELECT count(DISTINCT source) FROM events').fetchone()[0]:,} sources"))  # type: ignore[index]
        rows.append(("the copy's file", f"{path.stat().st_size / 1e6:,.1f} MB"))
        connection = duckdb.connect(str(path), config={"threads": 2, "memory_limit": "512MB"})
        start = END - timedelta(days=30)
        rows.append(("GET /v1/channels' query, 30 days", timed(lambda: channel_metrics(connection.cursor(), start, END, END),
                                                                args.runs)))
        rows.append(("peak resident memory, all", f"{resident_megabytes('VmHWM'):,.0f} MB"))
        connection.close()
    print(f"| {args.events:,} events, {args.persons:,} persons, "
          f"{args.sources or 'the bench' + chr(39) + 's 6'} sources ({ROOT}) | |\n|---|---|")
    for name, figure in rows:
        print(f"| {name} | {figure} |")


if __name__ == "__main__":
    main()
