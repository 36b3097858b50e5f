"""Funnel definitions operators create through the API, and the built-in ``default`` beside them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import epoch_micros, from_epoch_micros
from libs.common.http import decode_cursor, encode_cursor
from services.funnel.adapters.tables import funnels
from services.funnel.domain.funnels import DEFAULT_FUNNEL, FunnelDefinition, FunnelStep

DEFAULT_FUNNEL_ID = "default"
_FILTERS = ("product_id", "category", "source")


@dataclass(frozen=True)
class StoredFunnel:
    funnel_id: str
    definition: FunnelDefinition
    created_at: datetime | None  # None for the built-in funnel

    @property
    def built_in(self) -> bool:
        return self.created_at is None


BUILT_IN = StoredFunnel(DEFAULT_FUNNEL_ID, DEFAULT_FUNNEL, None)


def _definition_json(definition: FunnelDefinition) -> str:
    steps = [
        {"type": step.type, "where": {name: getattr(step, name) for name in _FILTERS if getattr(step, name) is not None}}
        for step in definition.steps
    ]
    return orjson.dumps({"steps": steps, "window_seconds": definition.window_seconds, "unit": definition.unit}).decode()


def _stored(row: Any) -> StoredFunnel:
    body = orjson.loads(row.definition)
    definition = FunnelDefinition(
        name=row.name,
        steps=tuple(FunnelStep(step["type"], **step["where"]) for step in body["steps"]),
        window_seconds=body["window_seconds"],
        unit=body["unit"],
    )
    return StoredFunnel(row.funnel_id, definition, from_epoch_micros(row.created_us))


async def add_funnel(
    connection: AsyncConnection, funnel_id: str, definition: FunnelDefinition, created_at: datetime
) -> StoredFunnel:
    await connection.execute(
        funnels.insert().values(
            funnel_id=funnel_id, name=definition.name, definition=_definition_json(definition),
            created_us=epoch_micros(created_at),
        )
    )
    return StoredFunnel(funnel_id, definition, created_at)


async def get_funnel(connection: AsyncConnection, funnel_id: str) -> StoredFunnel | None:
    if funnel_id == DEFAULT_FUNNEL_ID:
        return BUILT_IN
    row = (await connection.execute(select(funnels).where(funnels.c.funnel_id == funnel_id))).first()
    return None if row is None else _stored(row)


async def delete_funnel(connection: AsyncConnection, funnel_id: str) -> bool:
    """Remove a defined funnel; False when there is none with this id (the built-in one cannot be removed)."""
    result = await connection.execute(delete(funnels).where(funnels.c.funnel_id == funnel_id))
    return bool(result.rowcount)


async def list_funnels(
    connection: AsyncConnection, *, limit: int, cursor: str | None
) -> tuple[Sequence[StoredFunnel], str | None]:
    """The built-in funnel first, then the defined ones oldest first; keyset-paginated."""
    after = decode_cursor(cursor, 2)
    listed: list[StoredFunnel] = [BUILT_IN] if after is None else []
    query = select(funnels).order_by(funnels.c.created_us, funnels.c.funnel_id)
    if after is not None:
        created_us, funnel_id = int(after[0]), str(after[1])
        query = query.where(
            or_(
                funnels.c.created_us > created_us,
                and_(funnels.c.created_us == created_us, funnels.c.funnel_id > funnel_id),
            )
        )
    rows = (await connection.execute(query.limit(limit + 1 - len(listed)))).all()
    listed.extend(_stored(row) for row in rows)
    page = listed[:limit]
    last = page[-1]
    last_created_us = -1 if last.created_at is None else epoch_micros(last.created_at)
    return page, encode_cursor([last_created_us, last.funnel_id]) if len(listed) > limit else None
