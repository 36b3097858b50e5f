"""Stored campaigns: one row each, the audience, offer and variants as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import epoch_micros, from_epoch_micros
from services.campaigns.adapters.tables import assignments, campaigns, touches

Json = dict[str, Any]  # a JSON column as loaded


@dataclass(frozen=True)
class CampaignRecord:
    """A campaign as stored (money in cents, times in epoch micros)."""

    campaign_id: str
    name: str
    status: str
    audience: Json
    offer: Json
    variants: list[Json]
    holdout_bp: int
    window_days: int
    per_touch_cost_cents: int
    budget_cents: int | None
    webhook_url: str
    webhook_secret: str
    webhook_disabled: str | None
    start_us: int | None
    end_us: int | None
    send_us: int | None
    scheduled_sent: bool
    paused_reason: str | None
    created_us: int
    activated_us: int | None
    completed_us: int | None

    @property
    def audience_kind(self) -> str:
        return self.audience["kind"]

    @property
    def segment_id(self) -> str | None:
        return self.audience.get("segment_id")

    @property
    def hours(self) -> int | None:
        return self.audience.get("hours")

    def assigns_at(self, moment_us: int) -> bool:
        """Whether a person entering at this moment is assigned: active, started, not ended."""
        return (self.status == "active" and (self.start_us is None or moment_us >= self.start_us)
                and (self.end_us is None or moment_us < self.end_us))


def _record(row: Any) -> CampaignRecord:
    return CampaignRecord(
        campaign_id=row.campaign_id, name=row.name, status=row.status, audience=orjson.loads(row.audience),
        offer=orjson.loads(row.offer), variants=orjson.loads(row.variants), holdout_bp=row.holdout_bp,
        window_days=row.window_days, per_touch_cost_cents=row.per_touch_cost_cents, budget_cents=row.budget_cents,
        webhook_url=row.webhook_url, webhook_secret=row.webhook_secret, webhook_disabled=row.webhook_disabled,
        start_us=row.start_us, end_us=row.end_us, send_us=row.send_us, scheduled_sent=bool(row.scheduled_sent),
        paused_reason=row.paused_reason, created_us=row.created_us, activated_us=row.activated_us,
        completed_us=row.completed_us,
    )


def _values(record: CampaignRecord) -> dict[str, Any]:
    return {
        "campaign_id": record.campaign_id, "name": record.name, "status": record.status,
        "audience": orjson.dumps(record.audience).decode(), "audience_kind": record.audience_kind,
        "segment_id": record.segment_id, "offer": orjson.dumps(record.offer).decode(),
        "variants": orjson.dumps(record.variants).decode(), "holdout_bp": record.holdout_bp,
        "window_days": record.window_days, "per_touch_cost_cents": record.per_touch_cost_cents,
        "budget_cents": record.budget_cents, "webhook_url": record.webhook_url,
        "webhook_secret": record.webhook_secret, "webhook_disabled": record.webhook_disabled,
        "start_us": record.start_us, "end_us": record.end_us, "send_us": record.send_us,
        "scheduled_sent": record.scheduled_sent, "paused_reason": record.paused_reason,
        "created_us": record.created_us, "activated_us": record.activated_us, "completed_us": record.completed_us,
    }


async def insert_campaign(connection: AsyncConnection, record: CampaignRecord) -> None:
    await connection.execute(campaigns.insert().values(**_values(record)))


async def save_campaign(connection: AsyncConnection, record: CampaignRecord) -> None:
    values = _values(record)
    values.pop("campaign_id")
    await connection.execute(update(campaigns).where(campaigns.c.campaign_id == record.campaign_id).values(**values))


async def load_campaign(connection: AsyncConnection, campaign_id: str, *, lock: bool = False) -> CampaignRecord | None:
    """One campaign; ``lock``: FOR UPDATE on PostgreSQL (SQLite's writer already holds the database lock)."""
    query = select(campaigns).where(campaigns.c.campaign_id == campaign_id)
    if lock:
        query = query.with_for_update()
    row = (await connection.execute(query)).first()
    return None if row is None else _record(row)


async def list_campaigns(connection: AsyncConnection, *, after: tuple[int, str] | None, limit: int,
                         status: str | None = None) -> list[CampaignRecord]:
    """Campaigns newest first, paged by (created_us, campaign_id)."""
    c = campaigns.c
    query = select(campaigns).order_by(c.created_us.desc(), c.campaign_id.desc()).limit(limit)
    if after is not None:
        query = query.where((c.created_us < after[0]) | ((c.created_us == after[0]) & (c.campaign_id < after[1])))
    if status is not None:
        query = query.where(c.status == status)
    return [_record(row) for row in await connection.execute(query)]


async def campaigns_with(connection: AsyncConnection, *, statuses: Sequence[str],
                         kinds: Sequence[str] | None = None) -> list[CampaignRecord]:
    query = select(campaigns).where(campaigns.c.status.in_(statuses))
    if kinds is not None:
        query = query.where(campaigns.c.audience_kind.in_(kinds))
    return [_record(row) for row in await connection.execute(query)]


async def assignment_rows(connection: AsyncConnection, campaign_id: str, *, after: tuple[int, str] | None,
                          limit: int) -> list[Any]:
    """The campaign's assignments with their touch's status (null for the holdout), paged by
    (assigned_us, person_key)."""
    a, t = assignments.c, touches.c
    query = (select(a.person_key, a.variant, a.assigned_us, t.status)
             .select_from(assignments.outerjoin(touches, and_(t.campaign_id == a.campaign_id,
                                                              t.person_key == a.person_key)))
             .where(a.campaign_id == campaign_id).order_by(a.assigned_us, a.person_key).limit(limit))
    if after is not None:
        query = query.where((a.assigned_us > after[0]) | ((a.assigned_us == after[0]) & (a.person_key > after[1])))
    return list((await connection.execute(query)).all())


async def touch_rows(connection: AsyncConnection, campaign_id: str, *, after: str | None, limit: int,
                     status: str | None = None) -> list[Any]:
    """The campaign's touches, paged by touch_id."""
    t = touches.c
    query = select(touches).where(t.campaign_id == campaign_id).order_by(t.touch_id).limit(limit)
    if after is not None:
        query = query.where(t.touch_id > after)
    if status is not None:
        query = query.where(t.status == status)
    return list((await connection.execute(query)).all())


def micros(moment: datetime | None) -> int | None:
    return None if moment is None else epoch_micros(moment)


def moment(us: int | None) -> datetime | None:
    return None if us is None else from_epoch_micros(us)
