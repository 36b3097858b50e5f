"""Schemathesis drives every operation of the campaigns OpenAPI (valid and invalid inputs, a bounded number of
examples each) against the running service: no answer is a 5xx, and every answer matches the published schema."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.campaigns.conftest import Campaigns
from tests.integration.test_openapi_fuzz import fuzz


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_campaigns_operation_answers_without_5xx_and_as_its_schema_says(campaigns: Campaigns):
    await campaigns.create()  # something for the list and path operations to find
    failures: list[str] = []
    base_url = str(campaigns.client.base_url).rstrip("/")
    calls = await asyncio.get_running_loop().run_in_executor(None, lambda: fuzz(base_url, failures))
    assert not failures, "\n".join(failures)
    assert calls > 0
