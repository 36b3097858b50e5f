"""Rule segments, stored membership and the outbox of membership changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import insert
from libs.common.events import epoch_micros, from_epoch_micros
from services.segmentation.adapters.facts import chunks
from services.segmentation.adapters.tables import customer_segments, segment_changes, segments
from services.segmentation.domain.rules import parse_rule
from services.segmentation.segments import SegmentDefinition, SegmentKind, membership_ids

_MEMBERSHIP_LOCK = 7461003  # PostgreSQL advisory lock key of this service's membership changes


async def lock_membership(connection: AsyncConnection) -> None:
    """Serialize membership evaluations and erasures until the transaction ends (SQLite: BEGIN IMMEDIATE does)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MEMBERSHIP_LOCK})


class DuplicateSegmentName(ValueError):
    """Another segment already has this name."""


def _definition(row: Any) -> SegmentDefinition:
    # Stored rules passed parse_rule on creation; parsing again rebuilds the immutable tree.
    raw_rule = orjson.loads(row.rule)
    return SegmentDefinition(segment_id=row.segment_id, name=row.name, kind=SegmentKind.RULE,
                             rule=parse_rule(raw_rule), created_at=from_epoch_micros(row.created_us),
                             rule_json=raw_rule)


async def add_rule_segment(connection: AsyncConnection, segment: SegmentDefinition) -> None:
    """Store a validated rule segment; DuplicateSegmentName if the name is taken."""
    assert segment.created_at is not None
    try:
        async with connection.begin_nested():
            await connection.execute(segments.insert().values(
                segment_id=segment.segment_id, name=segment.name, rule=orjson.dumps(segment.rule_json).decode(),
                created_us=epoch_micros(segment.created_at),
            ))
    except IntegrityError:
        raise DuplicateSegmentName(segment.name) from None


async def rule_segments(connection: AsyncConnection) -> list[SegmentDefinition]:
    """Every rule segment, oldest first."""
    rows = await connection.execute(select(segments).order_by(segments.c.created_us, segments.c.segment_id))
    return [_definition(row) for row in rows]


async def rule_segment(connection: AsyncConnection, segment_id: str) -> SegmentDefinition | None:
    row = (await connection.execute(select(segments).where(segments.c.segment_id == segment_id))).first()
    return None if row is None else _definition(row)


async def member_counts(connection: AsyncConnection) -> dict[str, int]:
    """Stored (last published) member count per segment."""
    query = select(customer_segments.c.segment_ids, func.count()).group_by(customer_segments.c.segment_ids)
    counts: Counter[str] = Counter()
    for key, persons in await connection.execute(query):
        for segment_id in membership_ids(key):
            counts[segment_id] += persons
    return dict(counts)


async def store_memberships(connection: AsyncConnection, memberships: Mapping[str, str],
                            records: Sequence[tuple[str, str, bytes]]) -> None:
    """Store persons' new membership keys (``""``: in no segment any more) and queue their change records
    ``(change_id, person_key, payload)``."""
    kept = [{"person_key": person, "segment_ids": key} for person, key in memberships.items() if key]
    if kept:
        statement = insert(connection, customer_segments)
        await connection.execute(statement.on_conflict_do_update(
            index_elements=["person_key"], set_={"segment_ids": statement.excluded.segment_ids}
        ), kept)
    for batch in chunks(person for person, key in memberships.items() if not key):
        await connection.execute(delete(customer_segments).where(customer_segments.c.person_key.in_(batch)))
    if records:
        await connection.execute(segment_changes.insert(), [
            {"change_id": change_id, "person_key": person, "payload": payload.decode()}
            for change_id, person, payload in records
        ])


async def queued_changes(connection: AsyncConnection, limit: int) -> list[Any]:
    """The oldest unpublished change records, locked against other replicas publishing them too."""
    query = (select(segment_changes.c.seq, segment_changes.c.person_key, segment_changes.c.payload)
             .order_by(segment_changes.c.seq).limit(limit).with_for_update(skip_locked=True))
    return list((await connection.execute(query)).all())


async def forget_changes(connection: AsyncConnection, seqs: Sequence[int]) -> None:
    for start in range(0, len(seqs), 900):
        batch = seqs[start:start + 900]
        await connection.execute(delete(segment_changes).where(segment_changes.c.seq.in_(batch)))
