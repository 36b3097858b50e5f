"""The version of the counted orders: what the read side's cached RFM cuts are keyed on (tables.fact_versions)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import insert
from services.segmentation.adapters.tables import fact_versions

# This process's row: replicas bump their own, so no consumer transaction waits on another's row lock.
_WRITER = uuid.uuid4().hex


async def bump_fact_version(connection: AsyncConnection) -> None:
    """Mark the counted orders changed, in the transaction that changes them."""
    statement = insert(connection, fact_versions).values(writer=_WRITER, version=1)
    await connection.execute(statement.on_conflict_do_update(
        index_elements=["writer"], set_={"version": fact_versions.c.version + 1},
    ))


async def fact_version(connection: AsyncConnection) -> tuple[int, int]:
    """(writers, total of their versions): changes whenever a committed transaction changed counted orders.
    Read it before the facts: cuts computed afterwards are at least that new."""
    row = (await connection.execute(
        select(func.count(), func.coalesce(func.sum(fact_versions.c.version), 0))
    )).one()
    return int(row[0]), int(row[1])
