"""Due work decided by the scheduler: abandonment deadlines, end_at, budget pausing, 410 disabling the endpoint,
the frequency cap across campaigns, and erasure keeping the counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import MetaData, select

from libs.common.events import format_timestamp
from libs.common.kafka import PRIVACY_TOPIC
from libs.common.privacy import ErasureRequest
from services.campaigns.adapters.tables import segment_members
from services.campaigns.settings import (
    CampaignsSettings,
    FrequencyCapSettings,
    SchedulerSettings,
    WebhookSettings,
)
from tests.integration.campaigns.conftest import (
    TEST_RETRIES,
    WRITE,
    Campaigns,
    event,
    order,
)
from tests.support import eventually

EVERYONE = [{"name": "coupon", "split_bp": 10_000}]


@pytest.fixture
def settings(fast_common_settings, database_url) -> CampaignsSettings:
    # A cap of one touch per person per week across campaigns.
    return CampaignsSettings(
        database_url=database_url, common=fast_common_settings,
        webhooks=WebhookSettings(retry_schedule_seconds=TEST_RETRIES[:4], timeout_seconds=5, claim_lease_seconds=5),
        scheduler=SchedulerSettings(poll_seconds=0.1), frequency_cap=FrequencyCapSettings(max_touches=1, per_days=7),
    )


async def _assignments(campaigns: Campaigns, campaign_id: str) -> dict[str, dict]:
    return {a["person_key"]: a for a in await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/assignments")}


async def test_cart_abandoned_enters_at_the_deadline_unless_an_order_fell_within_it(campaigns: Campaigns):
    campaign = await campaigns.create(audience={"kind": "cart_abandoned", "hours": 2}, holdout_bp=0,
                                      variants=EVERYONE)
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    t = campaigns.clock.now + timedelta(seconds=1)
    await campaigns.send([
        event("add_to_cart", "cart-left", t, "c-1"),
        event("add_to_cart", "cart-saved", t, "c-2"), order("cart-saved", t + timedelta(hours=1), "o-2", "o-2"),
        event("add_to_cart", "cart-edge", t, "c-3"), order("cart-edge", t + timedelta(hours=2), "o-3", "o-3"),
        event("add_to_cart", "cart-late", t, "c-4"), order("cart-late", t + timedelta(hours=2, seconds=1), "o-4", "o-4"),
        event("inquiry", "asked", t, "q-1", inquiry={"inquiry_id": "q-1"}),
    ])
    await eventually(lambda: campaigns.service.metrics.registry.get_sample_value(
        "shoploop_events_consumed_total", {"consumer": "campaigns"}) == 8, deadline_seconds=60, what="events applied")
    assert await _assignments(campaigns, campaign_id) == {}  # nothing before the deadline
    campaigns.clock.move(timedelta(hours=2, minutes=1))

    async def decided() -> dict:
        found = await _assignments(campaigns, campaign_id)
        return found if len(found) == 2 else {}

    found = await eventually(decided, deadline_seconds=60, what="the deadlines decided")
    assert set(found) == {"cart-left", "cart-late"}  # an order at exactly t + H still rescues the cart
    assert all(datetime.fromisoformat(a["assigned_at"]) == t + timedelta(hours=2) for a in found.values())


async def test_end_at_completes_and_a_completed_campaign_assigns_nobody(campaigns: Campaigns):
    end_at = campaigns.clock.now + timedelta(hours=1)
    campaign = await campaigns.create(end_at=end_at.isoformat(), holdout_bp=0, variants=EVERYONE)
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    campaigns.clock.move(timedelta(hours=2))

    async def completed() -> bool:
        return (await campaigns.get(f"/v1/campaigns/{campaign_id}"))["status"] == "completed"

    await eventually(completed, deadline_seconds=60, what="the campaign completed at end_at")
    await campaigns.enter_segment("lifecycle:dormant", ["too-late"], campaigns.clock.now)
    await eventually(lambda: campaigns.service.metrics.registry.get_sample_value(
        "shoploop_events_consumed_total", {"consumer": "campaigns-segments"}) == 1, deadline_seconds=60, what="the entry applied")
    assert await _assignments(campaigns, campaign_id) == {}


async def test_reaching_the_budget_pauses_the_campaign_and_sends_no_more(campaigns: Campaigns):
    campaign = await campaigns.create(per_touch_cost="1.00", budget="3.00", holdout_bp=0, variants=EVERYONE)
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    await campaigns.enter_segment("lifecycle:dormant", [f"b-{n}" for n in range(8)], campaigns.clock.now)

    async def paused() -> dict:
        shown = await campaigns.get(f"/v1/campaigns/{campaign_id}")
        return shown if shown["status"] == "paused" else {}

    shown = await eventually(paused, deadline_seconds=60, what="the campaign paused by its budget")
    assert shown["paused_reason"] == "budget"
    report = await campaigns.get(f"/v1/campaigns/{campaign_id}/report")
    assert report["variants"]["coupon"]["touched"] == 3 and report["variants"]["coupon"]["cost"] == 3.0
    assert report["variants"]["coupon"]["assigned"] == 8  # intent to treat: every assignment counts
    assert len(campaigns.receiver.delivered) == 3


async def test_a_410_disables_the_endpoint_and_fails_its_touches(campaigns: Campaigns):
    campaigns.receiver.failing, campaigns.receiver.fail_status = True, 410
    campaign = await campaigns.create(holdout_bp=0, variants=EVERYONE)
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    await campaigns.enter_segment("lifecycle:dormant", ["g-1", "g-2", "g-3"], campaigns.clock.now)

    async def all_failed() -> list:
        listed = await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/touches")
        return listed if len(listed) == 3 and all(t["status"] == "failed" for t in listed) else []

    await eventually(all_failed, deadline_seconds=60, what="every touch failed")
    assert "410" in (await campaigns.get(f"/v1/campaigns/{campaign_id}"))["webhook_disabled"]
    assert campaigns.receiver.failed_attempts <= 3  # no retries to a gone endpoint


async def test_the_frequency_cap_suppresses_a_second_campaigns_touch(campaigns: Campaigns):
    first = (await campaigns.create(holdout_bp=0, variants=EVERYONE))["campaign_id"]
    second = (await campaigns.create(holdout_bp=0, variants=EVERYONE,
                                     audience={"kind": "segment_entered", "segment_id": "rfm:at_risk"}))["campaign_id"]
    for campaign_id in (first, second):
        await campaigns.act(campaign_id, "activate")
    await campaigns.enter_segment("lifecycle:dormant", ["f-1"], campaigns.clock.now)
    await eventually(lambda: len(campaigns.receiver.delivered) == 1, deadline_seconds=60, what="the first touch delivered")
    await campaigns.enter_segment("rfm:at_risk", ["f-1"], campaigns.clock.now)

    async def suppressed() -> list:
        listed = await campaigns.all_pages(f"/v1/campaigns/{second}/touches")
        return listed if listed and listed[0]["status"] == "suppressed" else []

    [touch] = await eventually(suppressed, deadline_seconds=60, what="the second touch suppressed")
    assert touch["coupon_code"] is None
    report = await campaigns.get(f"/v1/campaigns/{second}/report")
    assert report["variants"]["coupon"]["assigned"] == 1 and report["variants"]["coupon"]["touched"] == 0


async def test_erasure_removes_the_key_and_codes_and_keeps_the_report(campaigns: Campaigns):
    campaign_id = (await campaigns.create(holdout_bp=0, variants=EVERYONE))["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    await campaigns.enter_segment("lifecycle:dormant", ["erase-me-7", "keep-me"], campaigns.clock.now)
    await eventually(lambda: len(campaigns.receiver.delivered) == 2, deadline_seconds=60, what="both touches delivered")
    code = {t["person_key"]: t["coupon_code"] for t in campaigns.receiver.touches.values()}["erase-me-7"]
    await campaigns.send([order("erase-me-7", campaigns.clock.now + timedelta(hours=1), "eo-1", "eo-1", "150.00",
                                coupon_code=code, discount="30.00")])
    as_of = (campaigns.clock.now + timedelta(days=1)).isoformat()

    async def redeemed() -> dict:
        report = await campaigns.get(f"/v1/campaigns/{campaign_id}/report", as_of=as_of)
        return report if report["variants"]["coupon"]["redemptions"] == 1 else {}

    before = await eventually(redeemed, deadline_seconds=60, what="the redemption counted")
    request = ErasureRequest.new("erase-me-7", datetime.now(UTC))
    await campaigns.publisher.publish(PRIVACY_TOPIC, b"erase-me-7", request.to_json())
    await eventually(lambda: campaigns.service.metrics.registry.get_sample_value(
        "shoploop_events_consumed_total", {"consumer": "campaigns-privacy"}) == 1, deadline_seconds=60, what="the erasure applied")
    async with campaigns.service.database.read() as connection:
        # Every table, read as the database has it (a table added later is checked too).
        reflected = MetaData()
        await connection.run_sync(reflected.reflect)
        for table in reflected.tables.values():
            for row in await connection.execute(select(table)):
                text = " ".join(str(value) for value in row)
                assert "erase-me-7" not in text and code not in text, (table.name, row)
    assert await campaigns.get(f"/v1/campaigns/{campaign_id}/report", as_of=as_of) == before
    validation = await campaigns.client.post("/v1/coupons/validate", headers=WRITE,
                                             json={"code": code, "person_key": "erase-me-7", "total": 150})
    assert validation.json()["reason"] == "unknown"


async def test_a_scheduled_send_takes_the_members_at_send_at_even_when_it_runs_later(campaigns: Campaigns):
    now = campaigns.clock.now
    send_at = now + timedelta(hours=1)
    campaign_id = (await campaigns.create(holdout_bp=0, variants=EVERYONE, audience={
        "kind": "segment_scheduled", "segment_id": "tier:gold", "send_at": format_timestamp(send_at)}))["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    before, after = send_at - timedelta(minutes=30), send_at + timedelta(minutes=30)
    await campaigns.enter_segment("tier:gold", ["stays", "leaves-before", "leaves-after"], before)
    await campaigns.enter_segment("tier:gold", ["leaves-before"], before + timedelta(minutes=10), change="exited")
    await campaigns.enter_segment("tier:gold", ["leaves-after"], after, change="exited")
    await campaigns.enter_segment("tier:gold", ["joins-after"], after)
    async def mirrored() -> bool:
        async with campaigns.service.database.read() as connection:
            rows = (await connection.execute(select(segment_members.c.person_key, segment_members.c.exited_us))).all()
        return len(rows) == 4 and sum(row.exited_us is not None for row in rows) == 2

    await eventually(mirrored, what="every change in the mirror")
    # The send runs after every change above was seen (as after a restart past send_at).
    campaigns.clock.move(timedelta(hours=2))
    campaigns.service.scheduler.wake()
    assigned = await eventually(lambda: _assignments(campaigns, campaign_id), what="the scheduled send")
    assert set(assigned) == {"stays", "leaves-after"}
    assert {a["assigned_at"] for a in assigned.values()} == {format_timestamp(send_at)}
