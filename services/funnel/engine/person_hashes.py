"""Persons numbered by a 64-bit hash of their key, stored with each row of the fact copy, and the registry that says
whether two keys share a number.

Funnels (``funnels.py``) join and group units by person; grouping 2M rows by their string keys (and checking, per
query, that no two keys share a hash) was most of a funnel's time at 10M events. So each ``events`` /
``order_events`` row carries ``ph = hash(person_key)`` (UBIGINT), computed as the row is appended (nearly free in
the same insert), and the fold keeps, beside the KPI and product state:

- ``person_hashes``: every distinct (ph, person_key) of the folded rows;
- ``hash_clashes``: the numbers two keys of ``person_hashes`` share (in practice none: at 1M persons the odds of
  one are about 3 in 10^8).

A funnel may group by ``ph`` alone when no two keys among the rows it reads share one, which holds when
``hash_clashes`` is empty and the rows applied after ``copy_state.folded`` (at most a fold's worth) bring no key
whose number another key has, in the registry or among them (``clash_possible``, in the funnel's
snapshot). Otherwise the funnel computes its answer by the keys themselves.

Exact under everything the copy meets: a row's ``ph`` is a function of its own key, so late and out-of-order
rows, and an erasure's rewritten rows (a new key, so a new number), carry theirs; an erasure removes the old keys
from ``person_hashes`` (``forget``), so the old key leaves the file with the compaction, and their rows, appended
again, are unfolded until the next fold registers the new key. A number left in ``hash_clashes`` by a forgotten
key only sends answers to the keys' form: slower, not wrong. DuckDB's ``hash`` is not promised to stay the same
across its versions, so the copy keeps ``HASH_PROBE``'s hash (``copy_state.hash_probe``) and is rebuilt when the
running DuckDB hashes it otherwise (``mirror.py``).
"""

from __future__ import annotations

import duckdb
import pyarrow.compute as pc

# A row's person number, as the copy computes it when the row is appended.
NUMBER = "hash(person_key)"
# A fixed text whose hash, kept in the copy, tells whether the running DuckDB numbers keys as the copy's rows do.
HASH_PROBE = "shoploop person key hash probe"
PROBE_SQL = f"hash('{HASH_PROBE}')"


def create_state(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS person_hashes (ph UBIGINT, person_key VARCHAR)")
    connection.execute("CREATE TABLE IF NOT EXISTS hash_clashes (ph UBIGINT)")


def fold(connection: duckdb.DuckDBPyConnection, where: str) -> None:
    """The keys of the rows meeting ``where`` registered with their number, and the numbers they share with
    another key recorded (inside the caller's transaction)."""
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE person_hash_fold AS
        SELECT DISTINCT e.ph, e.person_key FROM events e WHERE {where}""")
    connection.execute("""
        INSERT INTO person_hashes
        SELECT n.ph, n.person_key FROM person_hash_fold n
        ANTI JOIN person_hashes p ON p.ph = n.ph AND p.person_key = n.person_key""")
    connection.execute("""
        INSERT INTO hash_clashes
        SELECT p.ph FROM person_hashes p SEMI JOIN person_hash_fold n ON n.ph = p.ph
        GROUP BY p.ph HAVING count(*) > 1
        EXCEPT SELECT ph FROM hash_clashes""")
    connection.execute("DROP TABLE person_hash_fold")


def forget(connection: duckdb.DuckDBPyConnection, person_keys: list[str]) -> None:
    """Keys an erasure replaced leave the registry (their rows come back under the new key, folded again)."""
    if person_keys:
        connection.execute("DELETE FROM person_hashes WHERE person_key IN (SELECT unnest(?))", [person_keys])


def clash_possible(cursor: duckdb.DuckDBPyConnection, folded: int) -> bool:
    """Whether two keys among the copy's rows may share a number: a recorded clash, or a key of the rows applied
    after ``folded`` whose number another key has (registered, or of those rows). Run in the query's snapshot.
    In steps, so that the registry (a row per person) is only probed for the unfolded rows' numbers, held as an
    Arrow table (DuckDB then builds its hash table on them). At 10M events / 1M persons, with 0 / 1,000 / 11,000 /
    61,000 unfolded rows: 1 / 15 / 24 / 30 ms; as one join, which hashed the registry, 52 / 50 / 59 / 59 ms; with the
    numbers fetched to Python, 1 / 15 / 40 / 120 ms."""
    if cursor.execute("SELECT EXISTS (SELECT 1 FROM hash_clashes)").fetchone()[0]:  # type: ignore[index]
        return True
    fresh = cursor.execute("SELECT ph, count(DISTINCT person_key) AS keys, min(person_key) AS person_key FROM events "
                           "WHERE applied > ? GROUP BY ph", [folded]).to_arrow_table()
    if fresh.num_rows == 0:
        return False
    if pc.max(fresh["keys"]).as_py() > 1:  # two keys of the unfolded rows share a number
        return True
    cursor.register("fresh_numbers", fresh)
    try:
        return bool(cursor.execute(  # type: ignore[index]
            "SELECT EXISTS (SELECT 1 FROM person_hashes p JOIN fresh_numbers f ON p.ph = f.ph "
            "WHERE p.person_key <> f.person_key)").fetchone()[0])
    finally:
        cursor.unregister("fresh_numbers")


__all__ = ("HASH_PROBE", "NUMBER", "PROBE_SQL", "clash_possible", "create_state", "fold", "forget")
