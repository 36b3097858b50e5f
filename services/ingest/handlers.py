"""Ingest's consumer side: rejected events from the topic into the listable table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from services.ingest.adapters.rejected import RejectedRecord, record_rejections


async def keep_rejections(connection: AsyncConnection, records: Sequence[RejectedRecord]) -> None:
    """Make rejected events listable through GET /v1/rejected."""
    await record_rejections(connection, records)
