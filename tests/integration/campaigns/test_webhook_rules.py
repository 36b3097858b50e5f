"""Webhook rules at the edges: Retry-After is honoured, and outside local mode loopback URLs are refused at
creation (a literal address) and at send time (a name that resolves to one, checked where the connection
resolves it, so a DNS answer that changes after a check is refused too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.common.settings import CommonSettings
from services.campaigns.bootstrap import create_campaigns_app
from services.campaigns.delivery import CheckedResolver
from services.campaigns.settings import CampaignsSettings, SchedulerSettings, WebhookSettings
from tests.integration.campaigns.conftest import TEST_RETRIES, Campaigns, campaign_body
from tests.support import eventually, serve_app

EVERYONE = [{"name": "coupon", "split_bp": 10_000}]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_retry_after_holds_the_next_attempt_back(campaigns: Campaigns):
    campaigns.receiver.fail_next, campaigns.receiver.retry_after = 1, "1"  # the schedule says 0.05 s
    campaign_id = (await campaigns.create(holdout_bp=0, variants=EVERYONE))["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    await campaigns.enter_segment("lifecycle:dormant", ["ra-1"], campaigns.clock.now)
    await eventually(lambda: len(campaigns.receiver.delivered) == 1, deadline_seconds=60, what="the delivery")
    [times] = campaigns.receiver.attempt_times.values()
    assert len(times) == 2 and times[1] - times[0] >= 0.95


KEYS = "prod-write:campaigns;prod-read:read"


@pytest.fixture
async def production(fast_common_settings, database_url, clock) -> AsyncIterator[httpx.AsyncClient]:
    common = CommonSettings(env="production", api_keys=KEYS, kafka=fast_common_settings.kafka)
    settings = CampaignsSettings(database_url=database_url, common=common,
                                 webhooks=WebhookSettings(retry_schedule_seconds=TEST_RETRIES[:2]),
                                 scheduler=SchedulerSettings(poll_seconds=0.1))
    app = create_campaigns_app(settings, clock=clock)
    async with serve_app(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_outside_local_mode_loopback_and_plain_http_are_refused(production: httpx.AsyncClient):
    write = {"Authorization": "Bearer prod-write"}
    for url, reason in (("http://example.com/hook", "https"), ("https://127.0.0.1/hook", "loopback"),
                        ("https://10.1.2.3/hook", "private"), ("https://100.64.0.1/hook", "CGNAT"),
                        ("https://[fd00::1]/hook", "unique-local")):
        response = await production.post("/v1/campaigns", json=campaign_body(url), headers=write)
        assert response.status_code == 422 and reason in response.json()["detail"], (url, response.text)
    # A name is resolved at send time: localhost is refused then, and the touch is not sent.
    body = campaign_body("https://localhost:1/hook", holdout_bp=0, variants=EVERYONE,
                         audience={"kind": "cart_abandoned", "hours": 1})
    created = await production.post("/v1/campaigns", json=body, headers=write)
    assert created.status_code == 201, created.text
    service = production.app.state.service  # type: ignore[attr-defined]
    from services.campaigns.adapters.campaigns import load_campaign
    async with service.database.read() as connection:
        record = await load_campaign(connection, created.json()["campaign_id"])
    outcome = await service.deliverer._send(_FakeRow(), record)
    assert outcome.verdict == "retry" and "loopback" in outcome.detail


class _FakeRow:
    touch_id = "msg_test"
    campaign_id = "c"
    person_key = "p"
    variant = "coupon"
    coupon_code = None
    status = "pending"
    created_us = 0
    delivered_us = None


class _RebindingResolver:
    """A DNS server that answers a public address first and a loopback one afterwards (DNS rebinding)."""

    def __init__(self) -> None:
        self.answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])

    async def resolve(self, host: str, port: int = 0, family: int = 2) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": next(self.answers), "port": port, "family": family, "proto": 0,
                 "flags": 0}]

    async def close(self) -> None:
        return None


async def test_a_name_is_checked_where_the_connection_resolves_it_so_a_rebinding_answer_is_refused():
    resolver = CheckedResolver(_RebindingResolver())  # type: ignore[arg-type]
    first = await resolver.resolve("hooks.example.com", 443)
    assert [result["host"] for result in first] == ["93.184.216.34"]
    # The next connection resolves again, and that answer is checked before anything is dialled.
    with pytest.raises(OSError, match="loopback"):
        await resolver.resolve("hooks.example.com", 443)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_deliverer_dials_only_checked_addresses(production: httpx.AsyncClient):
    service = production.app.state.service  # type: ignore[attr-defined]
    deliverer = service.deliverer
    deliverer._resolver = _RebindingResolver()
    await deliverer.aclose()  # the next session is built with the resolver above
    body = campaign_body("https://hooks.example.com:1/hook", holdout_bp=0, variants=EVERYONE,
                         audience={"kind": "cart_abandoned", "hours": 1})
    created = await production.post("/v1/campaigns", json=body, headers={"Authorization": "Bearer prod-write"})
    assert created.status_code == 201, created.text
    from services.campaigns.adapters.campaigns import load_campaign
    async with service.database.read() as connection:
        record = await load_campaign(connection, created.json()["campaign_id"])
    deliverer._resolver.answers = iter(["127.0.0.1"])
    outcome = await deliverer._send(_FakeRow(), record)
    assert outcome.verdict == "retry" and "loopback" in outcome.detail, outcome
