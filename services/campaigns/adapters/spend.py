"""Spend per (source, day), in cents: set by the API (a re-send replaces it), read over a range of days."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import insert, wide_sum, wide_total
from services.campaigns.adapters.tables import spend


async def set_spend(connection: AsyncConnection, source: str, day: date, amount_cents: int, updated_us: int) -> None:
    """The spend of (source, day), replacing any stored before."""
    statement = insert(connection, spend).values(source=source, day=day.isoformat(), amount_cents=amount_cents,
                                                 updated_us=updated_us)
    statement = statement.on_conflict_do_update(
        index_elements=["source", "day"],
        set_={"amount_cents": statement.excluded.amount_cents, "updated_us": statement.excluded.updated_us})
    await connection.execute(statement)


def _in_days(first: date, last: date) -> tuple[Any, ...]:
    return spend.c.day >= first.isoformat(), spend.c.day <= last.isoformat()


async def spend_rows(connection: AsyncConnection, first: date, last: date, *, after: tuple[str, str] | None,
                     limit: int) -> list[Any]:
    """(source, day, amount_cents) for the days first..last included, by day then source, after ``after``."""
    s = spend.c
    page = select(s.source, s.day, s.amount_cents).where(*_in_days(first, last)).order_by(s.day, s.source).limit(limit)
    if after is not None:
        page = page.where(tuple_(s.day, s.source) > tuple_(literal(after[0]), literal(after[1])))
    return list((await connection.execute(page)).all())


async def spend_total_cents(connection: AsyncConnection, first: date, last: date) -> int:
    """The exact sum of the spend over the days first..last included."""
    high, low = wide_sum(spend.c.amount_cents)
    return wide_total(*(await connection.execute(select(high, low).where(*_in_days(first, last)))).one()) or 0
