"""The 4-step person funnel with and without its per-day state (services/funnel/engine/funnel_windows.py), in DuckDB
alone. Not a test.

Builds (or reuses, ``--path``) the copy of bench/funnel_kpi_state.py (``--events`` events of ``--persons`` persons
over 90 days, the distribution of bench/funnel_queries.py, folded as the first load does), registers the funnel
view -> add_to_cart -> inquiry -> order (W = 7 days: its state built over every row, timed, with the file's growth),
then times over the last 30 days (``--runs`` runs after a warm-up; wall and process CPU): the answer from the state,
the usual path on the copy (stored person numbers, entrants from the KPI state), and the Parquet form (``kept=False``).
Then it appends ``--unfolded`` rows (copies of the newest, an hour earlier, under new ids) and times the answer with
them not folded, and the fold of them with the state registered and without. Every answer is checked equal.

Run: ``python bench/funnel_windows.py --events 3000000 --persons 300000``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.funnel_kpi_state import END, append_unfolded, arguments, build  # noqa: E402
from services.funnel.adapters.mirror import fold_state  # noqa: E402
from services.funnel.domain.funnels import FunnelDefinition, FunnelStep  # noqa: E402
from services.funnel.engine import funnel_windows, funnels  # noqa: E402

FUNNEL = FunnelDefinition("bench", tuple(FunnelStep(kind) for kind in ("view", "add_to_cart", "inquiry", "order")),
                          window_seconds=7 * 86400)


def timed(call: Callable[[], object], runs: int) -> str:
    call()
    walls, cpus = [], []
    for _ in range(runs):
        began, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu)
    return (f"wall p50 {statistics.median(walls) * 1000:,.0f} ms (max {max(walls) * 1000:,.0f}), "
            f"CPU p50 {statistics.median(cpus) * 1000:,.0f} ms; load {os.getloadavg()[0]:.1f}")


def once(call: Callable[[], object]) -> str:
    began, cpu = time.perf_counter(), time.process_time()
    call()
    return (f"{time.perf_counter() - began:.2f} s wall, {time.process_time() - cpu:.2f} s CPU; "
            f"load {os.getloadavg()[0]:.1f}")


def transaction(connection: duckdb.DuckDBPyConnection, change: Callable[[], None]) -> None:
    connection.execute("BEGIN")
    change()
    connection.execute("COMMIT")


def main() -> None:
    args = arguments(__doc__, "the copy's file, without the funnel's state (kept; reused when it exists)")
    config = {"threads": 2, "memory_limit": "512MB"}
    with tempfile.TemporaryDirectory(prefix="shoploop-bench-windows-") as directory:
        path = Path(args.path) if args.path else Path(directory, "copy.duckdb")
        if not path.exists():
            with duckdb.connect(str(path), config=config) as connection:
                build(connection, args.events, args.persons)
        work = Path(directory, "work.duckdb")
        shutil.copy(path, work)
        connection = duckdb.connect(str(work), config=config)
        rows = [("register the funnel (its state over every day)",
                 once(lambda: transaction(connection, lambda: funnel_windows.register(connection, FUNNEL))))]
        connection.execute("CHECKPOINT")
        size = connection.execute("SELECT count(*), sum(bit_length(bits)) // 8 FROM funnel_window_bits").fetchone()
        count = connection.execute("SELECT count(*) FROM funnel_window_rows").fetchone()[0]  # type: ignore[index]
        rows.append(("the state", f"{count:,} rows; {size[0]:,} bitstrings of {size[1] / 2**20:,.1f} MB; file "  # type: ignore[index]
                                  f"{work.stat().st_size / 2**20:,.0f} MB against {path.stat().st_size / 2**20:,.0f} MB"))
        start = END - timedelta(days=30)

        def answer(kept: bool = True) -> object:
            return funnels.funnel_result_sql(connection.cursor(), FUNNEL, start, END, END, None, kept=kept)

        def usual() -> object:
            saved = funnels.windowed
            funnels.windowed = lambda definition: False  # type: ignore[assignment]
            try:
                return answer()
            finally:
                funnels.windowed = saved

        state, plain = answer(), usual()
        assert state == plain == answer(False), (state, plain)
        print(state, file=sys.stderr)
        rows += [("4-step, from the state", timed(answer, args.runs)),
                 ("4-step, the usual path on the copy", timed(usual, args.runs)),
                 ("4-step, the Parquet form (kept=False)", timed(lambda: answer(False), args.runs))]
        new = append_unfolded(connection, args.unfolded)
        assert answer() == usual()
        rows.append((f"4-step, from the state, {args.unfolded:,} rows not folded", timed(answer, args.runs)))
        rows.append((f"4-step, the usual path, {args.unfolded:,} rows not folded", timed(usual, args.runs)))
        # The fold of those rows, with the funnel registered and without (each in a transaction rolled back).
        for label, registered in (("fold, the funnel registered", True), ("fold, no funnel registered", False)):
            connection.execute("BEGIN")
            if not registered:
                connection.execute("DELETE FROM funnel_windows")
            rows.append((f"{label} ({args.unfolded:,} rows)", once(lambda: fold_state(connection, new))))
            connection.execute("ROLLBACK")
        connection.close()
    for label, figure in rows:
        print(f"{label:60} {figure}")


if __name__ == "__main__":
    main()
