"""Consumer handlers of the segmentation service: events into customer facts, erasure requests."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import PublishedEvent
from libs.common.privacy import ErasureRequest
from services.segmentation.adapters.facts import erase_persons, record_events
from services.segmentation.adapters.segments import lock_membership
from services.segmentation.adapters.versions import bump_fact_version
from services.segmentation.domain.customers import OrderStatus


async def record_customer_facts(connection: AsyncConnection,
                                events: Sequence[PublishedEvent]) -> Sequence[PublishedEvent]:
    """Store events as the persons' facts; returns those not stored before (the membership scheduler hears of
    them after the commit). The consumer runs without claims: stored event_ids are the idempotency record."""
    applied = await record_events(connection, events)
    if applied:  # cached counts are stale; cached RFM cuts only if counted orders may have changed
        await bump_fact_version(connection, orders=any(
            event.order is not None and event.order.status == OrderStatus.COMPLETED for event in applied))
    return applied


async def erase_customers(connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
    """Delete the persons' profiles, traits, facts, membership and queued changes (event keys stay, pseudonymous)."""
    # Not while an evaluation that loaded their facts is about to store their membership.
    await lock_membership(connection)
    await erase_persons(connection, {request.person_key: request.pseudonym for request in requests})
    await bump_fact_version(connection, orders=True)
