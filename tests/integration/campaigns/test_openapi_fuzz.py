"""Schemathesis drives every operation of the campaigns OpenAPI (valid and invalid inputs, a bounded number of
examples each) against the running service: no answer is a 5xx, and every answer matches the published schema.
Random input never names a stored campaign, so the answers about one (report, assignments, touches) and spend
are also called once each and held to the same schema."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.campaigns.conftest import Campaigns
from tests.integration.test_openapi_fuzz import conforms, fuzz
from tests.support import eventually


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_campaigns_operation_answers_without_5xx_and_as_its_schema_says(campaigns: Campaigns):
    campaign = await campaigns.create()  # something for the list and path operations to find
    campaign_id = campaign["campaign_id"]
    await campaigns.act(campaign_id, "activate")
    persons = [f"fuzz-{n}" for n in range(8)]
    await campaigns.enter_segment("lifecycle:dormant", persons, campaigns.clock.now)
    await eventually(lambda: _assigned(campaigns, campaign_id, len(persons)), what="every person assigned")

    failures: list[str] = []
    base_url = str(campaigns.client.base_url).rstrip("/")
    calls = await asyncio.get_running_loop().run_in_executor(None, lambda: fuzz(base_url, failures))
    assert not failures, "\n".join(failures)
    assert calls > 0

    def chosen_calls() -> dict[str, dict]:
        stored = {"campaign_id": campaign_id}
        answers = {path: conforms(base_url, f"/v1/campaigns/{{campaign_id}}{path}", "GET",
                                  path_parameters=stored).json()
                   for path in ("", "/report", "/assignments", "/touches")}
        answers["post spend"] = conforms(base_url, "/v1/spend", "POST",
                                         body={"source": "douyin", "day": "2026-05-01", "amount": 12.5}).json()
        answers["get spend"] = conforms(base_url, "/v1/spend", "GET",
                                        query={"from": "2026-05-01", "to": "2026-05-02"}).json()
        return answers

    answers = await asyncio.get_running_loop().run_in_executor(None, chosen_calls)
    report = answers["/report"]
    assert set(report["variants"]) == {"holdout", "coupon"} and set(report["comparisons"]) == {"coupon"}
    assert sum(arm["assigned"] for arm in report["variants"].values()) == len(persons)
    assert len(answers["/assignments"]["items"]) == len(persons)
    assert answers["post spend"] == {"source": "douyin", "day": "2026-05-01", "amount": 12.5}
    assert answers["get spend"]["total"] >= 12.5


async def _assigned(campaigns: Campaigns, campaign_id: str, count: int) -> bool:
    return len(await campaigns.all_pages(f"/v1/campaigns/{campaign_id}/assignments")) == count
