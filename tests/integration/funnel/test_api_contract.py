"""What the funnel API answers before any event matters: validation, auth, funnel definitions and paging.

These run without a broker (the service serves HTTP while it waits for one), so they start in a blink.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from libs.common.broker import free_port
from libs.common.settings import CommonSettings, KafkaSettings
from services.funnel.settings import FunnelSettings
from tests.integration.funnel.helpers import CAMPAIGNS, Funnel, running_funnel

DAY = {"from": "2026-03-02", "to": "2026-03-03"}


def _offline(database_url: str) -> FunnelSettings:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    return FunnelSettings(database_url=database_url, common=CommonSettings(env="local", kafka=kafka), max_page_size=50)


@pytest.fixture
async def offline(tmp_path) -> AsyncIterator[Funnel]:
    async with running_funnel(_offline(f"sqlite+aiosqlite:///{tmp_path / 'funnel.db'}"), ready_path="/healthz") as app:
        yield app


@pytest.fixture
async def offline_on_both(database_url) -> AsyncIterator[Funnel]:
    async with running_funnel(_offline(database_url), ready_path="/healthz") as app:
        yield app


@pytest.mark.parametrize(("path", "params", "fragment"), [
    ("/v1/kpis", {"from": "2026-03-02"}, "query.to: Field required"),
    ("/v1/kpis", {"from": "yesterday", "to": "2026-03-03"}, "from: 'yesterday' is not an RFC 3339 timestamp"),
    ("/v1/kpis", {"from": "2026-02-30", "to": "2026-03-03"}, "from: day is out of range"),
    ("/v1/kpis", {"from": "2026-03-03", "to": "2026-03-02"}, "from: must be before to"),
    ("/v1/kpis", {**DAY, "granularity": "week"}, "query.granularity: Input should be 'range' or 'day'"),
    ("/v1/kpis", {"from": "2024-01-01", "to": "2026-01-01", "granularity": "day"}, "at most 366 days"),
    ("/v1/kpis", {"from": "2020-01-01", "to": "2026-01-01"}, "to: a range covers at most 1096 days"),
    ("/v1/products", {"from": "1970-01-01", "to": "8999-01-01"}, "to: a range covers at most 1096 days"),
    ("/v1/kpis", {**DAY, "as_of": "2026-03-02"}, "as_of: '2026-03-02' is not an RFC 3339 timestamp"),
    ("/v1/funnels/default/result", {**DAY, "breakdown": "city"}, "query.breakdown"),
    ("/v1/products", {**DAY, "limit": "51"}, "limit: at most 50"),
    ("/v1/products", {**DAY, "limit": "0"}, "query.limit: Input should be greater than or equal to 1"),
    ("/v1/products/matrix", {"as_of": "soon"}, "as_of:"),
    ("/v1/products/matrix", {"as_of": "9999-12-31T23:59:59Z"}, "as_of: 9999-12-31T23:59:59Z is outside"),
    ("/v1/funnels/default/result", {"from": "0001-01-01", "to": "2026-01-01"}, "from: 0001-01-01"),
    ("/v1/channels", {"to": "2026-03-03"}, "query.from: Field required"),
])
async def test_bad_parameters_are_422_with_the_reason(offline, path, params, fragment):
    response = await offline.client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("invalid_parameter", "invalid_request")
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(("definition", "fragment"), [
    ({"steps": [{"type": "view"}]}, "body.name: Field required"),
    ({"name": "x", "steps": []}, "body.steps: List should have at least 1 item"),
    ({"name": "x", "steps": [{"type": "view"}] * 11}, "body.steps: List should have at most 10 items"),
    ({"name": "x", "steps": [{"type": "click"}]}, "body.steps[0].type: Input should be 'view'"),
    ({"name": "x", "steps": [{"type": "view", "where": {"city": "x"}}]}, "body.steps[0].where.city: Extra inputs"),
    ({"name": "x", "steps": [{"type": "view", "where": {"source": ""}}]}, "body.steps[0].where.source"),
    ({"name": "x", "steps": [{"type": "view"}], "window_seconds": 0}, "body.window_seconds"),
    ({"name": "x", "steps": [{"type": "view"}], "window_seconds": "7d"}, "body.window_seconds"),
    ({"name": "x", "steps": [{"type": "view"}], "unit": "session"}, "body.unit"),
    ({"name": "x", "steps": [{"type": "view"}], "owner": "me"}, "body.owner: Extra inputs"),
])
async def test_an_invalid_funnel_definition_is_422_with_the_reason(offline, definition, fragment):
    response = await offline.client.post("/v1/funnels", json=definition, headers=CAMPAIGNS)
    assert response.status_code == 422
    assert fragment in response.json()["detail"], response.json()


async def test_routes_need_a_key_with_the_read_scope(offline):
    async with httpx.AsyncClient(base_url=str(offline.client.base_url)) as anonymous:
        for path in ("/v1/funnels", "/v1/kpis", "/v1/products/matrix"):
            assert (await anonymous.get(path, params=DAY)).status_code == 401
            wrong = await anonymous.get(path, params=DAY, headers={"Authorization": "Bearer dev-ingest-key"})
            assert wrong.status_code == 403
        admin = await anonymous.get("/v1/funnels", headers={"Authorization": "Bearer dev-admin-key"})
        assert admin.status_code == 200


async def test_defined_funnels_are_stored_listed_in_pages_and_unknown_ones_are_404(offline_on_both):
    client = offline_on_both.client
    created = []
    for index in range(3):
        definition = {"name": f"漏斗 {index}", "unit": "product", "window_seconds": 3600,
                      "steps": [{"type": "view", "where": {"category": "dresses", "source": "douyin"}},
                                {"type": "order", "where": {"product_id": "p-1"}}]}
        response = await client.post("/v1/funnels", json=definition, headers=CAMPAIGNS)
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == f"/v1/funnels/{body['funnel_id']}"
        assert {k: body[k] for k in definition} == definition
        assert body["built_in"] is False and body["created_at"].endswith("Z")
        created.append(body)

    pages, cursor = [], None
    while True:
        page = await offline_on_both.get("/v1/funnels", limit=2, cursor=cursor)
        pages.append([item["funnel_id"] for item in page["items"]])
        if (cursor := page["next_cursor"]) is None:
            break
    assert pages == [["default", created[0]["funnel_id"]], [created[1]["funnel_id"], created[2]["funnel_id"]]]
    first = (await offline_on_both.get("/v1/funnels", limit=1))["items"][0]
    assert first == {"funnel_id": "default", "name": "default", "unit": "person", "window_seconds": 604800,
                     "built_in": True, "created_at": None,
                     "steps": [{"type": "view", "where": {}}, {"type": "add_to_cart", "where": {}},
                               {"type": "order", "where": {}}]}

    missing = await client.get("/v1/funnels/no-such-funnel/result", params=DAY)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    bad_cursor = await client.get("/v1/funnels", params={"cursor": "not-a-cursor"})
    assert bad_cursor.status_code == 400

    one = created[1]["funnel_id"]
    assert await offline_on_both.get(f"/v1/funnels/{one}") == created[1]
    assert (await client.delete(f"/v1/funnels/{one}", headers=CAMPAIGNS)).status_code == 204
    assert (await client.get(f"/v1/funnels/{one}")).status_code == 404
    assert (await client.get(f"/v1/funnels/{one}/result", params=DAY)).status_code == 404
    assert (await client.delete(f"/v1/funnels/{one}", headers=CAMPAIGNS)).status_code == 404
    listed = [item["funnel_id"] for item in (await offline_on_both.get("/v1/funnels"))["items"]]
    assert listed == ["default", created[0]["funnel_id"], created[2]["funnel_id"]]
    built_in = await client.delete("/v1/funnels/default", headers=CAMPAIGNS)
    assert built_in.status_code == 409 and built_in.json()["code"] == "built_in"


async def test_dates_are_days_of_the_reporting_time_zone_and_a_bare_plus_in_a_timestamp_is_understood(tmp_path):
    settings = _offline(f"sqlite+aiosqlite:///{tmp_path / 'funnel.db'}")
    settings = settings.model_copy(update={"common": settings.common.model_copy(update={"timezone": "Asia/Shanghai"})})
    async with running_funnel(settings, ready_path="/healthz") as app:
        # The query string below is not URL-encoded on purpose: its "+" arrives as a space.
        response = await app.client.get("/v1/kpis?from=2026-05-01&to=2026-05-01T12:00:00+08:00"
                                        "&as_of=2026-05-02T00:00:00+08:00")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["from"], body["to"], body["as_of"]) == (
            "2026-04-30T16:00:00.000000Z", "2026-05-01T04:00:00.000000Z", "2026-05-01T16:00:00.000000Z")
        assert body["time_zone"] == "Asia/Shanghai" and body["pv"] == 0 and body["conversion_rate"] is None
