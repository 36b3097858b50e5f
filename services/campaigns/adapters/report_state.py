"""The campaign report kept running: every assigned person's share (``report_totals.person_shares`` as of
everything stored) in ``report_persons`` and, per arm, the sum of its persons' shares in ``report_arms``.

Every write that can change a share (an order event, an assignment, a delivered touch) refreshes the shares of
the persons it touched, in its own transaction: their shares are recomputed from the stored rows, not
incremented, so a redelivered, late or out-of-order event leaves exactly what the full computation would, and
each arm moves by the difference between the old and new shares. The report for A then reads one row per arm
whenever A is at or after every time counted in them (``horizon_us``): the usual case, A = now. For an earlier A
it computes ``arm_totals_sql`` from the stored rows.

Writers take ``lock_report`` first: a share recomputed by one transaction must see every row another committed
before it (PostgreSQL: an advisory lock held to the end of the transaction, so each statement after it reads what
the previous holder committed; SQLite: BEGIN IMMEDIATE already serialises writers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import BulkRows, chunks, hold_write_lock
from services.campaigns.adapters.report_totals import (
    PersonShare,
    add_share,
    arm_totals_of,
    arm_totals_sql,
    empty_sums,
    person_shares,
    share_of,
)
from services.campaigns.adapters.tables import report_arms, report_persons
from services.campaigns.domain.attribution import ArmTotals

_REPORT_LOCK = 7461004  # PostgreSQL advisory lock key: writers of anything a campaign report counts
_PERSON_COLUMNS = ("campaign_id", "person_key", "variant", "touched", "orders", "revenue", "refunds", "redemptions",
                   "discount", "horizon_us")
_PERSON_ROWS = BulkRows(report_persons, _PERSON_COLUMNS)
_ARM_SUMS = tuple(empty_sums())
_TEXT_SUMS = ("revenue", "revenue_sq", "refunds", "discount_cost")  # may pass 64 bits
_ARM_COLUMNS = ("campaign_id", "variant", *_ARM_SUMS, "horizon_us")
_ARM_ROWS = BulkRows(report_arms, _ARM_COLUMNS)
_STREAM = 20_000


async def lock_report(connection: AsyncConnection) -> None:
    """Serialise this transaction with every other writer of report inputs until it ends."""
    await hold_write_lock(connection, _REPORT_LOCK)


async def refresh_persons(connection: AsyncConnection, persons: Iterable[str]) -> None:
    """Recompute the shares of every assignment of these persons and move their arms (caller holds the lock)."""
    keys = sorted(set(persons))
    if keys:
        await connection.run_sync(_refresh, keys)


async def add_assignments(connection: AsyncConnection, campaign_id: str, persons: Iterable[str]) -> None:
    """The shares of assignments just made (no share of theirs is stored yet): computed and added to their arms
    (caller holds the lock)."""
    keys = sorted(set(persons))
    if keys:
        await connection.run_sync(_refresh, keys, campaign_id)


async def record_deliveries(connection: AsyncConnection, delivered: Iterable[tuple[str, str, str]],
                            delivered_us: int) -> None:
    """Touches of these (campaign, person, variant) that have just become delivered at ``delivered_us`` (the
    caller's status-guarded UPDATE moved each from pending once): their shares become touched, their arms count
    them. The one change a delivery makes to a share, so no recomputation (caller holds the lock)."""
    by_arm: dict[tuple[str, str], list[str]] = defaultdict(list)
    for campaign_id, person_key, variant in delivered:
        by_arm[(campaign_id, variant)].append(person_key)
    if by_arm:
        await connection.run_sync(_record_deliveries, by_arm, delivered_us)


def _record_deliveries(connection: Connection, by_arm: dict[tuple[str, str], list[str]], delivered_us: int) -> None:
    p = report_persons.c
    moved: dict[tuple[str, str], dict[str, int]] = defaultdict(empty_sums)
    for (campaign_id, variant), persons in by_arm.items():
        for batch in chunks(persons):
            result = connection.execute(
                update(report_persons)
                .where(p.campaign_id == campaign_id, p.person_key.in_(batch), p.touched.is_(False))
                .values(touched=True, horizon_us=func.max(p.horizon_us, delivered_us)
                        if connection.dialect.name == "sqlite" else func.greatest(p.horizon_us, delivered_us)))
            moved[(campaign_id, variant)]["touched"] += result.rowcount
    _move_arms(connection, moved, defaultdict(lambda: delivered_us))


def rebuild(connection: Connection, campaign_id: str | None = None) -> None:
    """Every share and arm (of one campaign, or all) from the stored rows: a migration, a bulk load. Sync: it runs
    in migrations too."""
    dialect = connection.dialect.name
    p, a = report_persons.c, report_arms.c
    connection.execute(delete(report_persons).where(*([] if campaign_id is None else [p.campaign_id == campaign_id])))
    connection.execute(delete(report_arms).where(*([] if campaign_id is None else [a.campaign_id == campaign_id])))
    arms: dict[tuple[str, str], dict[str, int]] = defaultdict(empty_sums)
    horizons: dict[tuple[str, str], int] = defaultdict(int)
    rows: list[tuple[Any, ...]] = []
    statement = _PERSON_ROWS.insert(dialect)
    for row in connection.execution_options(yield_per=_STREAM).execute(*person_shares(dialect, campaign_id=campaign_id)):
        share = share_of(row)
        arm = (row.campaign_id, share.variant)
        add_share(arms[arm], share)
        horizons[arm] = max(horizons[arm], share.horizon_us)
        rows.append(_person_row(row.campaign_id, row.person_key, share))
        if len(rows) == _STREAM:
            connection.execute(statement, _PERSON_ROWS.params(dialect, rows))
            rows = []
    if rows:
        connection.execute(statement, _PERSON_ROWS.params(dialect, rows))
    _write_arms(connection, {arm: (sums, horizons[arm]) for arm, sums in arms.items()})
    # Statistics for the planner now, not at autovacuum's next pass: a table it believes empty is scanned whole
    # on every refresh rather than looked up in its person index.
    connection.execute(text(f"ANALYZE {report_persons.name}"))


async def arm_totals_as_of(connection: AsyncConnection, campaign_id: str, as_of_us: int) -> dict[str, ArmTotals]:
    """The campaign's arm totals as of A: the running sums when they hold nothing later than A, else computed."""
    totals = await running_totals(connection, campaign_id, as_of_us)
    return totals if totals is not None else await arm_totals_sql(connection, campaign_id, as_of_us)


async def running_totals(connection: AsyncConnection, campaign_id: str,
                         as_of_us: int) -> dict[str, ArmTotals] | None:
    """The campaign's arm totals as of A from the running sums, or None when something counted in them lies after
    A (the caller then computes ``arm_totals_sql``)."""
    a = report_arms.c
    rows = (await connection.execute(select(report_arms).where(a.campaign_id == campaign_id))).all()
    if any(row.horizon_us > as_of_us for row in rows):
        return None
    return {row.variant: arm_totals_of({name: int(getattr(row, name)) for name in _ARM_SUMS}) for row in rows}


async def touched_and_discount(connection: AsyncConnection, campaign_id: str) -> tuple[int, int]:
    """Every delivered touch and the discount cents of every redemption so far (what the budget is spent on)."""
    a = report_arms.c
    rows = (await connection.execute(select(a.touched, a.discount_cost).where(a.campaign_id == campaign_id))).all()
    return sum(row.touched for row in rows), sum(int(row.discount_cost) for row in rows)


def _person_row(campaign_id: str, person_key: str, share: PersonShare) -> tuple[Any, ...]:
    return (campaign_id, person_key, share.variant, share.touched, share.orders, str(share.revenue),
            str(share.refunds), share.redemptions, str(share.discount), share.horizon_us)


def _stored_share(row: Any) -> PersonShare:
    return PersonShare(variant=row.variant, touched=bool(row.touched), orders=int(row.orders),
                       revenue=int(row.revenue), refunds=int(row.refunds), redemptions=int(row.redemptions),
                       discount=int(row.discount), horizon_us=int(row.horizon_us))


def _refresh(connection: Connection, persons: Collection[str], new_in: str | None = None) -> None:
    # new_in: the persons' assignments to this campaign were just made; nothing else of theirs changed.
    dialect = connection.dialect.name
    p = report_persons.c
    moved: dict[tuple[str, str], dict[str, int]] = defaultdict(empty_sums)
    horizons: dict[tuple[str, str], int] = defaultdict(int)
    upsert = _PERSON_ROWS.insert(dialect)
    upsert = upsert.on_conflict_do_update(index_elements=["campaign_id", "person_key"],
                                          set_={name: upsert.excluded[name] for name in _PERSON_COLUMNS[2:]})
    for batch in chunks(persons):
        fresh = {(row.campaign_id, row.person_key): share_of(row)
                 for row in connection.execute(*person_shares(dialect, campaign_id=new_in, persons=batch))}
        # An assignment is never deleted (erasure renames it and its share alike), so a stored share has a fresh
        # one: only the persons with an assignment are looked up (most order batches are mostly of others).
        assigned = sorted({person_key for _, person_key in fresh})
        stored = {} if new_in is not None or not assigned else {
            (row.campaign_id, row.person_key): _stored_share(row)
            for row in connection.execute(select(report_persons).where(p.person_key.in_(assigned)))}
        changed = []
        for key, new in fresh.items():
            old = stored.get(key)
            if new == old:
                continue
            campaign_id, person_key = key
            if old is not None:
                add_share(moved[(campaign_id, old.variant)], old, -1)
            add_share(moved[(campaign_id, new.variant)], new)
            horizons[(campaign_id, new.variant)] = max(horizons[(campaign_id, new.variant)], new.horizon_us)
            changed.append(_person_row(campaign_id, person_key, new))
        if changed:
            connection.execute(upsert, _PERSON_ROWS.params(dialect, changed))
    if moved:
        _move_arms(connection, moved, horizons)


def _move_arms(connection: Connection, moved: dict[tuple[str, str], dict[str, int]],
               horizons: dict[tuple[str, str], int]) -> None:
    a = report_arms.c
    current: dict[tuple[str, str], tuple[dict[str, int], int]] = {}
    for campaign_id in sorted({campaign_id for campaign_id, _ in moved}):
        for row in connection.execute(select(report_arms).where(a.campaign_id == campaign_id)):
            current[(row.campaign_id, row.variant)] = ({name: int(getattr(row, name)) for name in _ARM_SUMS},
                                                       row.horizon_us)
    updated = {}
    for arm, delta in moved.items():
        sums, horizon = current.get(arm, (empty_sums(), 0))
        updated[arm] = ({name: sums[name] + delta[name] for name in _ARM_SUMS}, max(horizon, horizons[arm]))
    _write_arms(connection, updated)


def _write_arms(connection: Connection, arms: dict[tuple[str, str], tuple[dict[str, int], int]]) -> None:
    if not arms:
        return
    dialect = connection.dialect.name
    rows = [(campaign_id, variant, *(str(sums[name]) if name in _TEXT_SUMS else sums[name] for name in _ARM_SUMS),
             horizon)
            for (campaign_id, variant), (sums, horizon) in sorted(arms.items())]
    upsert = _ARM_ROWS.insert(dialect)
    upsert = upsert.on_conflict_do_update(index_elements=["campaign_id", "variant"],
                                          set_={name: upsert.excluded[name] for name in _ARM_COLUMNS[2:]})
    connection.execute(upsert, _ARM_ROWS.params(dialect, rows))
