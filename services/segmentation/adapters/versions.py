"""The versions of the stored facts: what the read side's cached counts are keyed on (tables.fact_versions)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import insert
from services.segmentation.adapters.tables import fact_versions

# This process's row: replicas bump their own, so no consumer transaction waits on another's row lock.
_WRITER = uuid.uuid4().hex


@dataclass(frozen=True)
class FactVersion:
    """Totals over every writer's row: each changes whenever a committed transaction changed its facts."""

    writers: int
    orders: int  # counted orders changed
    facts: int  # any fact changed (profiles: who is known since when)

    @property
    def of_orders(self) -> tuple[int, int]:
        return self.writers, self.orders


async def bump_fact_version(connection: AsyncConnection, *, orders: bool) -> None:
    """Mark the facts changed (and the counted orders, with ``orders``), in the transaction that changes them."""
    statement = insert(connection, fact_versions).values(writer=_WRITER, orders=int(orders), facts=1)
    await connection.execute(statement.on_conflict_do_update(
        index_elements=["writer"],
        set_={"orders": fact_versions.c.orders + int(orders), "facts": fact_versions.c.facts + 1},
    ))


async def fact_version(connection: AsyncConnection) -> FactVersion:
    """The current totals. Read them before the facts: what is computed afterwards is at least that new."""
    row = (await connection.execute(select(
        func.count(), func.coalesce(func.sum(fact_versions.c.orders), 0),
        func.coalesce(func.sum(fact_versions.c.facts), 0),
    ))).one()
    return FactVersion(int(row[0]), int(row[1]), int(row[2]))
