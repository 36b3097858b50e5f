"""One replica POSTs many touches at once, never more than ``webhooks.concurrency``: a slow receiver sees several
attempts in flight together, never more than the setting, and still gets every touch exactly once."""

from __future__ import annotations

import pytest

from services.campaigns.settings import CampaignsSettings
from tests.integration.campaigns.conftest import Campaigns
from tests.support import eventually

CONCURRENCY = 4


@pytest.fixture
def settings(settings: CampaignsSettings) -> CampaignsSettings:
    webhooks = settings.webhooks.model_copy(update={"concurrency": CONCURRENCY})
    return settings.model_copy(update={"webhooks": webhooks})


async def test_a_slow_receiver_gets_touches_in_parallel_up_to_the_concurrency_setting(campaigns: Campaigns):
    campaign = await campaigns.create(holdout_bp=0, variants=[{"name": "coupon", "split_bp": 10_000}])
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    campaigns.receiver.delay_seconds = 0.2
    persons = [f"slow-{n}" for n in range(24)]
    await campaigns.enter_segment("lifecycle:dormant", persons, campaigns.clock.now)

    async def all_delivered() -> bool:
        return len(campaigns.receiver.delivered) == len(persons)

    await eventually(all_delivered, deadline_seconds=60, what="every touch delivered")
    assert 1 < campaigns.receiver.most_in_flight <= CONCURRENCY
    assert all(len(payloads) == 1 for payloads in campaigns.receiver.delivered.values())
    assert campaigns.receiver.bad_signatures == []
    assert {touch["person_key"] for touch in campaigns.receiver.touches.values()} == set(persons)
