"""Ingest's consumer side: rejected events from the topic into the listable table; erasure requests out of it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.privacy import ErasureRequest
from services.ingest.adapters.rejected import RejectedRecord, delete_rejections_of, record_rejections


async def keep_rejections(connection: AsyncConnection, records: Sequence[RejectedRecord]) -> None:
    """Make rejected events listable through GET /v1/rejected."""
    await record_rejections(connection, records)


async def forget_rejections(connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
    """Delete the persons' rejected events, pending and replayed (SPEC.md "Customers": erasure).

    A rejected event's raw body is the person's data as sent, so the whole row goes; no count is kept of it.
    Rows are found by ``person_key``, derived from the body as an accepted event's key is
    (services/ingest/person_keys.py), so a body rejected for any other reason than its ids (bad timestamp,
    missing product, wrong currency, ...) is found. The raw text is not searched for the key: a body whose
    ids are absent or malformed names no person key (no accepted event could carry one from it), and a
    substring match would also delete other persons' rows ("u-1" in "u-10") and scan every body per request.
    A rejection still on ``shoploop.events.rejected.v1`` when the request is applied (not yet consumed, or
    read again by a new database from the topic's start) is stored afterwards; a new request erases it.
    A redelivered copy of an erased rejection stays out: the runtime recorded its rejection_id as processed.
    """
    await delete_rejections_of(connection, [request.person_key for request in requests])
