"""Consumer handlers of the segmentation service: events into customer facts, erasure requests."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.privacy import ErasureRequest
from services.segmentation.adapters.facts import erase_persons, record_events
from services.segmentation.adapters.segments import lock_membership
from services.segmentation.decoding import CustomerEvent


async def record_customer_facts(connection: AsyncConnection,
                                events: Sequence[CustomerEvent]) -> Sequence[CustomerEvent]:
    """Store events as the persons' facts; returns those not stored before (the membership scheduler hears of
    them after the commit). The consumer runs without claims: stored event_ids are the idempotency record. What
    the read side's counts depend on is logged by triggers (population_state.py). The consumer decodes records
    straight into ``CustomerEvent`` (decoding.py)."""
    return await record_events(connection, events)


async def erase_customers(connection: AsyncConnection, requests: Sequence[ErasureRequest]) -> None:
    """Delete the persons' profiles, traits, facts, membership and queued changes (event keys stay, pseudonymous)."""
    # Not while an evaluation that loaded their facts is about to store their membership.
    await lock_membership(connection)
    await erase_persons(connection, {request.person_key: request.pseudonym for request in requests})
