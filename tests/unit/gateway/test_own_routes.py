"""The gateway's own answers with the services behind it simulated: parts marked unavailable with the
reason, input errors named, the OpenAPI document and the dashboard page."""

from __future__ import annotations

import httpx
import pytest

from libs.common.settings import CommonSettings
from services.gateway.settings import GatewaySettings

READ = {"Authorization": "Bearer dev-read-key"}
RANGE = {"from": "2026-05-01", "to": "2026-05-08"}


def _answer(routes):
    def answer(request: httpx.Request) -> httpx.Response:
        for prefix, response in routes.items():
            if request.url.path.startswith(prefix):
                return response(request) if callable(response) else response
        return httpx.Response(200, json={"items": [], "next_cursor": None})
    return answer


async def test_overview_asks_the_funnel_for_both_periods_of_the_same_length(gateway, backends):
    await gateway.get("/v1/overview", params=RANGE, headers=READ)

    kpi_calls = [dict(r.url.params) for r in backends.requests if r.url.path == "/v1/kpis"]
    assert sorted((c["from"], c["to"], c["granularity"]) for c in kpi_calls) == [
        ("2026-04-24T00:00:00.000000Z", "2026-05-01T00:00:00.000000Z", "range"),
        ("2026-05-01T00:00:00.000000Z", "2026-05-08T00:00:00.000000Z", "day"),
    ]


async def test_a_service_answering_an_error_leaves_its_part_unavailable_with_the_reason(gateway, backends):
    backends.answer = _answer({"/v1/rfm": httpx.Response(500, json={"code": "boom", "detail": "disk on fire"})})

    response = await gateway.get("/v1/overview", params=RANGE, headers=READ)

    assert response.status_code == 200
    assert response.json()["rfm"] == {"status": "unavailable", "service": "segmentation",
                                      "reason": "answered 500: boom: disk on fire"}
    assert response.json()["lifecycle"]["status"] == "ok"


async def test_campaign_summaries_carry_each_report_or_why_it_is_missing(gateway, backends):
    backends.answer = _answer({
        "/v1/campaigns/c-2/report": httpx.Response(503, json={"code": "x", "detail": "warming up"}),
        "/v1/campaigns/c-1/report": httpx.Response(200, json={"campaign_id": "c-1", "srm": False}),
        "/v1/campaigns": httpx.Response(200, json={"items": [
            {"campaign_id": "c-1", "name": "唤醒", "status": "active"},
            {"campaign_id": "c-2", "name": "cart", "status": "paused"}], "next_cursor": None}),
    })

    campaigns = (await gateway.get("/v1/overview", params=RANGE, headers=READ)).json()["campaigns"]

    first, second = campaigns["items"]
    assert (first["name"], first["report"]) == ("唤醒", {"campaign_id": "c-1", "srm": False})
    assert second["report"] == {"status": "unavailable", "reason": "answered 503: x: warming up"}


@pytest.mark.parametrize(("params", "field"), [
    ({"from": "2026-05-08", "to": "2026-05-01"}, "from"),
    ({"from": "yesterday", "to": "2026-05-01"}, "from"),
    ({"from": "2026-05-01", "to": "2026-05-08", "as_of": "soon"}, "as_of"),
])
@pytest.mark.parametrize("path", ["/v1/overview", "/v1/channels"])
async def test_bad_ranges_are_422_naming_the_field_and_ask_no_service(gateway, backends, path, params, field):
    response = await gateway.get(path, params=params, headers=READ)

    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{field}: ")
    assert backends.requests == []


async def test_channels_without_the_funnel_is_an_error_naming_it(gateway, backends):
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    backends.answer = _answer({"/v1/channels": refuse})

    response = await gateway.get("/v1/channels", params=RANGE, headers=READ)

    assert (response.status_code, response.json()["code"]) == (503, "service_unavailable")
    assert response.json()["detail"].startswith("funnel: not reachable")


async def test_channels_sum_spend_over_every_page_of_the_campaigns_answer(gateway, backends):
    pages = {None: ({"source": "search", "day": "2026-05-01", "amount": 100.10}, "p2"),
             "p2": ({"source": "search", "day": "2026-05-02", "amount": 0.05}, None)}

    def spend(request):
        entry, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"items": [entry], "next_cursor": cursor})

    backends.answer = _answer({"/v1/spend": spend, "/v1/channels": httpx.Response(200, json={"items": [
        {"source": "search", "uv": 10, "buyers": 2, "orders": 3, "gmv": 400.3, "conversion_rate": 0.2,
         "uv_value": 40.03, "new_customers": 3}]})})

    [row] = (await gateway.get("/v1/channels", params=RANGE, headers=READ)).json()["items"]

    assert (row["spend"], row["roas"], row["cac"]) == (100.15, 400.3 / 100.15, 33.38)


def test_the_openapi_document_covers_every_route_served(make_gateway):
    from services.gateway.bootstrap import create_gateway_app

    app = create_gateway_app(GatewaySettings())
    paths = app.openapi()["paths"]
    for route in app.state.proxied_routes:
        operation = paths[route.path.replace(":path}", "}")][route.method.lower()]
        assert f"Served by **{route.service}**" in operation["description"]
    for own in ("/v1/overview", "/v1/channels", "/v1/health", "/", "/readyz", "/healthz", "/metrics"):
        assert own in paths


async def test_the_dashboard_offers_the_development_read_key_in_local_mode_only(make_gateway):
    local = await make_gateway().get("/")
    production = await make_gateway(common=CommonSettings(env="production", api_keys="k1:read")).get("/")

    assert local.headers["content-type"] == "text/html; charset=utf-8"
    assert '<meta name="shoploop-default-key" content="dev-read-key">' in local.text
    assert '<meta name="shoploop-default-key" content="">' in production.text
    script = await make_gateway().get("/dashboard/dashboard.js")
    assert script.status_code == 200 and "/v1/overview" in script.text
