"""Segment entries become assignments and signed webhook touches: a receiver that fails for a while and then
recovers gets every touch, each under one webhook-id, each signature verified by the standardwebhooks package."""

from __future__ import annotations

import hashlib

from tests.integration.campaigns.conftest import READ, Campaigns
from tests.support import eventually


def independent_arm(campaign_id: str, person: str, holdout_bp: int) -> str:
    bucket = int.from_bytes(hashlib.sha256(f"{campaign_id}:{person}".encode()).digest()[:8], "big") % 10_000
    return "holdout" if bucket < holdout_bp else "coupon"


async def test_every_touch_reaches_a_receiver_that_fails_then_recovers_once_under_its_id(campaigns: Campaigns):
    campaign = await campaigns.create()
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    campaigns.receiver.fail_next = 12
    persons = [f"u-{n}" for n in range(40)]
    await campaigns.enter_segment("lifecycle:dormant", persons, campaigns.clock.now)

    async def all_assigned() -> list[dict]:
        items = await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/assignments")
        return items if len(items) == len(persons) else []

    assigned = await eventually(all_assigned, deadline_seconds=60, what="every entrant assigned")
    assert {a["person_key"]: a["variant"] for a in assigned} == {
        p: independent_arm(campaign_id, p, 2000) for p in persons}
    treated = {a["person_key"] for a in assigned if a["variant"] != "holdout"}

    async def all_delivered() -> bool:
        return len(campaigns.receiver.delivered) == len(treated)

    await eventually(all_delivered, deadline_seconds=60, what="every touch delivered")
    assert campaigns.receiver.failed_attempts == 12
    assert campaigns.receiver.bad_signatures == []
    received = campaigns.receiver.touches
    assert {touch["person_key"] for touch in received.values()} == treated
    assert all(len(payloads) == 1 for payloads in campaigns.receiver.delivered.values())
    touches = await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/touches")
    assert {t["touch_id"] for t in touches} == set(received)

    async def recorded() -> bool:
        listed = await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/touches")
        return all(t["status"] == "delivered" for t in listed)

    await eventually(recorded, deadline_seconds=60, what="deliveries recorded")
    codes = [touch["coupon_code"] for touch in received.values()]
    assert len(set(codes)) == len(codes) and all(codes)
    assert all(a["touch_status"] == ("delivered" if a["variant"] != "holdout" else None)
               for a in await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/assignments"))
    response = await campaigns.client.get(f"/v1/campaigns/{campaign_id}/report", headers=READ)
    report = response.json()
    assert report["variants"]["coupon"]["touched"] == len(treated)
    assert report["variants"]["holdout"]["assigned"] == len(persons) - len(treated)
