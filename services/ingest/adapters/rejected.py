"""The ingest service's own table: rejected events, read from ``shoploop.events.rejected.v1``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from sqlalchemy import (
    Column,
    Index,
    MetaData,
    Table,
    and_,
    bindparam,
    delete,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Integer, String, Text

from libs.common.columns import ID, PERSON_KEY, optional, primary, required
from libs.common.db import Migration, create_all, insert
from libs.common.events import epoch_micros, format_timestamp, from_epoch_micros
from libs.common.http import decode_cursor, page_of
from services.ingest.person_keys import person_key_of, person_key_of_stored

metadata = MetaData()
rejected_events = Table(
    "rejected_events", metadata, *primary(rejection_id=String(64)),
    Column("received_us", BigInteger, nullable=False, index=True),
    *required(format=String(16), route=String(64), item_index=Integer, error=Text, raw=Text),
    # person_key: derived from raw when the rejection is recorded (services/ingest/person_keys.py); NULL when the
    # body names no person the way an accepted event would. What an erasure request deletes by.
    *optional(replayed_us=BigInteger, replayed_event_id=String(ID), person_key=String(PERSON_KEY)),
    Index("ix_rejected_events_person", "person_key"),
)

_BACKFILL_ROWS = 1000


def _person_key_on_rejected_events(connection: Connection) -> None:
    if "person_key" not in {column["name"] for column in inspect(connection).get_columns("rejected_events")}:
        connection.execute(text("ALTER TABLE rejected_events ADD COLUMN person_key VARCHAR(300)"))
    for index in rejected_events.indexes:
        index.create(connection, checkfirst=True)
    # In slices by rejection_id: the raw bodies of a large table need not be in memory at once.
    column = rejected_events.c
    fill = (update(rejected_events).where(column.rejection_id == bindparam("rejection"))
            .values(person_key=bindparam("key")))
    after = ""
    while True:
        rows = connection.execute(
            select(column.rejection_id, column.format, column.raw)
            .where(column.rejection_id > after, column.person_key.is_(None))
            .order_by(column.rejection_id).limit(_BACKFILL_ROWS)
        ).all()
        if not rows:
            return
        keys = [{"rejection": row.rejection_id, "key": person_key_of_stored(row.raw, row.format)} for row in rows]
        keys = [pair for pair in keys if pair["key"] is not None]
        if keys:
            connection.execute(fill, keys)
        after = rows[-1].rejection_id


# Step 1 creates the current tables on a new database; later steps bring an older database to the same.
MIGRATIONS = [
    Migration(1, "rejected events", create_all(metadata)),
    Migration(2, "rejected events keyed by person (derived from raw) for erasure", _person_key_on_rejected_events),
]


class RejectedRecord(BaseModel):
    """A rejected event as kept on the rejected-events topic: raw body and the reason."""

    rejection_id: str
    received_at: datetime
    format: Literal["native", "segment"]
    route: str
    index: int
    error: str
    raw: Any


def _moment(micros: int | None) -> str | None:
    return None if micros is None else format_timestamp(from_epoch_micros(micros))


async def record_rejections(connection: AsyncConnection, records: Sequence[RejectedRecord]) -> None:
    """Store rejected events (a replayed topic record is already there: do nothing)."""
    rows = [
        {
            "rejection_id": r.rejection_id, "received_us": epoch_micros(r.received_at), "format": r.format,
            "route": r.route, "item_index": r.index, "error": r.error, "raw": orjson.dumps(r.raw).decode(),
            "person_key": person_key_of(r.raw, r.format),
        }
        for r in records
    ]
    await connection.execute(
        insert(connection, rejected_events).on_conflict_do_nothing(index_elements=["rejection_id"]), rows
    )


def _public(row: Any) -> dict[str, Any]:
    return {
        "rejection_id": row.rejection_id, "received_at": _moment(row.received_us), "format": row.format,
        "route": row.route, "index": row.item_index, "error": row.error, "raw": orjson.loads(row.raw),
        "replayed_at": _moment(row.replayed_us), "replayed_event_id": row.replayed_event_id,
    }


async def list_rejected(
    connection: AsyncConnection, *, status: Literal["pending", "replayed", "all"], limit: int, cursor: str | None
) -> dict[str, Any]:
    """Newest first, keyset-paginated."""
    query = select(rejected_events).order_by(rejected_events.c.received_us.desc(), rejected_events.c.rejection_id.desc())
    if status == "pending":
        query = query.where(rejected_events.c.replayed_us.is_(None))
    elif status == "replayed":
        query = query.where(rejected_events.c.replayed_us.is_not(None))
    if cursor is not None:
        received, rejection = decode_cursor(cursor, 2)
        received_us, rejection_id = int(received), str(rejection)
        query = query.where(
            or_(
                rejected_events.c.received_us < received_us,
                and_(rejected_events.c.received_us == received_us, rejected_events.c.rejection_id < rejection_id),
            )
        )
    rows = (await connection.execute(query.limit(limit + 1))).all()
    page, next_cursor = page_of(rows, limit, lambda row: (row.received_us, row.rejection_id))
    return {"items": [_public(row) for row in page], "next_cursor": next_cursor}


async def load_rejected(connection: AsyncConnection, rejection_ids: Sequence[str]) -> dict[str, Any]:
    rows = (
        await connection.execute(select(rejected_events).where(rejected_events.c.rejection_id.in_(set(rejection_ids))))
    ).all()
    return {row.rejection_id: row for row in rows}


async def mark_replayed(connection: AsyncConnection, replayed: dict[str, str], at: datetime) -> None:
    """``replayed`` maps rejection_id to the event_id it was published as."""
    for rejection_id, event_id in replayed.items():
        await connection.execute(
            update(rejected_events)
            .where(rejected_events.c.rejection_id == rejection_id)
            .values(replayed_us=epoch_micros(at), replayed_event_id=event_id)
        )


async def delete_rejections_of(connection: AsyncConnection, person_keys: Sequence[str]) -> None:
    """Delete every rejected event (pending or replayed) recorded under these person keys."""
    if person_keys:
        await connection.execute(delete(rejected_events).where(rejected_events.c.person_key.in_(set(person_keys))))
