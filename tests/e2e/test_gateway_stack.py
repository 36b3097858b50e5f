"""The gateway in the whole stack as a user runs it: `make run` (deploy.embedded) and `make demo`
(deploy.demo) posting through the gateway; every overview and channel number checked against the services'
own answers, the health view, request ids in the services' logs, a service that is down or slow, and the
dashboard in a real headless Chromium."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from deploy.demo import Storefront
from libs.common.broker import free_port
from libs.common.events import format_timestamp
from libs.common.http import money
from services.gateway.bootstrap import create_gateway_app
from services.gateway.domain.periods import relative_change
from services.gateway.settings import GatewaySettings
from tests.integration.test_openapi_fuzz import fuzz
from tests.support import ROOT, embedded_stack, eventually

# The browser test's screenshots: docs/ when asked (`SCREENSHOTS_TO_DOCS=1`, to refresh the README's pictures),
# else a scratch directory, so a test run leaves the work tree as it found it.
SCREENSHOTS = (ROOT / "docs" if os.environ.get("SCREENSHOTS_TO_DOCS")
               else Path(os.environ.get("TMPDIR", "/tmp")) / "shoploop-screenshots")
SCREENSHOTS.mkdir(parents=True, exist_ok=True)

READ = {"Authorization": "Bearer dev-read-key"}
CAMPAIGNS = {"Authorization": "Bearer dev-campaigns-key"}
# The demo's month, ended yesterday: every event lies in the past, so the same arguments give the same events.
DEMO = {"seed": 11, "days": 20, "customers": 60, "end": datetime.now(UTC).date()}
RANGE = {"from": (DEMO["end"] - timedelta(days=DEMO["days"])).isoformat(), "to": DEMO["end"].isoformat()}
CHROMIUM = Path("/usr/bin/chromium")


def _expected_counts() -> dict[str, int]:
    events = list(Storefront(seed=DEMO["seed"], days=DEMO["days"], customers=DEMO["customers"],
                             end=DEMO["end"]).events())
    start = datetime.fromisoformat(RANGE["from"]).replace(tzinfo=UTC)
    end = datetime.fromisoformat(RANGE["to"]).replace(tzinfo=UTC)
    within = [e for e in events if start <= datetime.fromisoformat(e["occurred_at"]) < end]
    persons = {e.get("user_id") or f"anon:{e['anonymous_id']}" for e in events}
    orders = {e["order"]["order_id"] for e in within if e["type"] == "order" and e["order"]["status"] == "completed"}
    return {"pv": sum(e["type"] == "view" for e in within), "orders": len(orders), "persons": len(persons)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack after `make demo`, once every posted event is applied by the funnel and segmentation."""
    with embedded_stack(tmp_path_factory.mktemp("gateway-stack")) as urls:
        demo = subprocess.run(
            [sys.executable, "-m", "deploy.demo", "--gateway", urls["gateway"], "--seed", str(DEMO["seed"]),
             "--days", str(DEMO["days"]), "--customers", str(DEMO["customers"]), "--end", DEMO["end"].isoformat()],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert demo.returncode == 0, demo.stderr
        expected = _expected_counts()

        async def applied() -> bool:
            async with httpx.AsyncClient(base_url=urls["gateway"], headers=READ) as client:
                kpis = (await client.get("/v1/kpis", params=RANGE)).json()
                lifecycle = (await client.get("/v1/lifecycle")).json()
            return (kpis.get("pv"), kpis.get("orders"), lifecycle.get("customers")) == (
                expected["pv"], expected["orders"], expected["persons"])

        asyncio.run(eventually(applied, deadline_seconds=60, interval=0.25, what="the demo's events applied"))
        yield urls


async def _get(base_url: str, path: str, **params) -> dict:
    async with httpx.AsyncClient(base_url=base_url, headers=READ, timeout=30) as client:
        response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_overview_numbers_are_the_services_own_answers(stack):
    as_of = format_timestamp(datetime.now(UTC))
    overview = await _get(stack["gateway"], "/v1/overview", **RANGE, as_of=as_of)
    span = {"from": overview["from"], "to": overview["to"], "as_of": as_of}
    previous_span = {**overview["previous"], "as_of": as_of}
    at = {"as_of": overview["segments_as_of"]}

    current = await _get(stack["funnel"], "/v1/kpis", **span, granularity="day")
    previous = await _get(stack["funnel"], "/v1/kpis", **previous_span, granularity="range")
    funnel = await _get(stack["funnel"], "/v1/funnels/default/result", **span)
    lifecycle = await _get(stack["segmentation"], "/v1/lifecycle", **at)
    rfm = await _get(stack["segmentation"], "/v1/rfm", **at)
    tiers = await _get(stack["segmentation"], "/v1/tiers", **at)

    kpis = overview["kpis"]
    assert kpis["status"] == "ok"
    assert kpis["days"] == current.pop("days")
    assert kpis["current"] == current
    assert kpis["previous"] == previous
    assert kpis["change"]["gmv"] == relative_change(current["gmv"], previous["gmv"])
    assert kpis["current"]["pv"] > 0 and kpis["current"]["gmv"] > 0
    assert overview["previous"]["to"] == overview["from"]
    assert overview["segments_as_of"] == overview["to"]  # the range ended before now
    for part, direct in (("funnel", funnel), ("lifecycle", lifecycle), ("rfm", rfm), ("tiers", tiers)):
        assert overview[part] == {**direct, "status": "ok"}, part
    assert lifecycle["stages"]["dormant"] > 0  # the demo's earlier season leaves some customers dormant
    assert overview["campaigns"]["status"] in ("ok", "unavailable")


async def test_channel_numbers_are_the_funnels_with_spend_from_the_campaigns_service(stack):
    as_of = format_timestamp(datetime.now(UTC))
    # The demo posted spend per channel and day; these replace one day's and add a source without traffic.
    async with httpx.AsyncClient(base_url=stack["gateway"], headers=CAMPAIGNS) as client:
        for source, amount in {"search": "300.10", "paid_social": "1200.00", "billboard": "99.99"}.items():
            response = await client.post("/v1/spend", json={"source": source, "day": RANGE["from"],
                                                            "amount": float(amount)})
            assert response.status_code in (200, 201), response.text
    posted = await _get(stack["campaigns"], "/v1/spend", **RANGE)
    spend: dict[str, Decimal] = {}
    for entry in posted["items"]:
        spend[entry["source"]] = spend.get(entry["source"], Decimal(0)) + Decimal(str(entry["amount"]))
    assert spend["billboard"] == Decimal("99.99") and len(spend) > 3

    joined = await _get(stack["gateway"], "/v1/channels", **RANGE, as_of=as_of)
    direct = await _get(stack["funnel"], "/v1/channels", **RANGE, as_of=as_of)

    by_source = {item["source"]: item for item in joined["items"]}
    for item in direct["items"]:
        row = by_source.pop(item["source"])
        assert {name: row[name] for name in item} == item
        source_spend = spend.get(item["source"])
        if source_spend is None:
            assert (row["spend"], row["roas"], row["cac"]) == (None, None, None)
        else:
            assert row["spend"] == money(source_spend)
            assert row["roas"] == (float(Decimal(str(item["gmv"])) / source_spend) if source_spend else None)
            assert row["cac"] == (money(source_spend / item["new_customers"]) if item["new_customers"] else None)
    assert set(by_source) == set(spend) - {item["source"] for item in direct["items"]}
    assert joined["spend"]["status"] == "ok"


async def test_health_shows_every_service_with_lag_last_event_and_dead_letters(stack):
    health = await _get(stack["gateway"], "/v1/health")

    services = {entry["service"]: entry for entry in health["services"]}
    assert set(services) == {"ingest", "funnel", "segmentation", "campaigns"}
    for name in ("ingest", "funnel", "segmentation"):
        assert services[name]["status"] == "ready"
        assert services[name]["version"]
        for group in services[name]["consumers"].values():
            assert {"lag", "last_event_occurred_at", "last_processed_at", "dead_lettered"} <= set(group)
    assert services["funnel"]["consumers"]["funnel"]["lag"] == 0
    assert services["funnel"]["consumers"]["funnel"]["last_event_occurred_at"] is not None
    assert services["funnel"]["consumers"]["funnel"]["dead_lettered"] == 0
    async with httpx.AsyncClient(base_url=stack["gateway"]) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_a_request_id_given_to_the_gateway_is_in_the_services_log(stack):
    request_id = f"e2e-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=stack["gateway"], headers=READ) as client:
        response = await client.get("/v1/overview", params=RANGE, headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id
    logs = Path(stack["logs"])

    def logged() -> bool:
        return all(request_id in (logs / f"{name}.log").read_text(encoding="utf-8")
                   for name in ("gateway", "funnel", "segmentation"))

    await eventually(logged, what=f"{request_id} in the gateway's, funnel's and segmentation's logs")


async def test_overview_answers_with_a_stopped_and_a_slow_service_marking_their_parts(stack):
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)  # accepts, never answers
    slow_url = f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    settings = GatewaySettings(ingest_url=stack["ingest"], funnel_url=stack["funnel"],
                               segmentation_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: stopped
                               campaigns_url=slow_url, part_timeout_seconds=1.0)
    app = create_gateway_app(settings)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=READ,
                timeout=30) as gateway:
            overview = (await gateway.get("/v1/overview", params=RANGE))
            readyz = await gateway.get("/readyz")
            health = (await gateway.get("/v1/health")).json()
    finally:
        silent.close()

    assert overview.status_code == 200
    body = overview.json()
    assert body["kpis"]["status"] == "ok" and body["funnel"]["status"] == "ok"
    for part in ("lifecycle", "rfm", "tiers"):
        assert body[part]["status"] == "unavailable"
        assert body[part]["service"] == "segmentation"
        assert "not reachable" in body[part]["reason"]
    assert body["campaigns"]["status"] == "unavailable"
    assert "within 1 s" in body["campaigns"]["reason"]
    assert readyz.status_code == 503
    statuses = {entry["service"]: entry["status"] for entry in health["services"]}
    assert statuses == {"ingest": "ready", "funnel": "ready", "segmentation": "unreachable",
                        "campaigns": "unreachable"}


# ---- the dashboard in a real browser --------------------------------------------------------------------


def _chromium_or_skip() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (make install installs it)"
    else:
        reason = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)"
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs Chromium)")
    if reason:
        pytest.skip(reason)


def _money_text(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


async def test_dashboard_shows_the_apis_numbers_and_follows_the_date_range(stack):
    _chromium_or_skip()
    from playwright.async_api import async_playwright

    gateway = stack["gateway"]
    to_included = (date.fromisoformat(RANGE["to"]) - timedelta(days=1)).isoformat()
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{gateway}/?from={RANGE['from']}&to={to_included}")
            await page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            overview = await _get(gateway, "/v1/overview", **RANGE)
            channels = await _get(gateway, "/v1/channels", **RANGE)
            matrix = await _get(gateway, "/v1/products/matrix", as_of=overview["segments_as_of"], limit=1000)

            # KPI cards: the API's values, formatted, with the change against the previous period.
            for name in ("gmv", "orders", "buyers", "uv", "conversion_rate", "aov"):
                card = page.locator(f'[data-kpi="{name}"]')
                assert float(await card.get_attribute("data-value")) == overview["kpis"]["current"][name], name
            gmv_text = await page.locator('[data-kpi="gmv"] .value').inner_text()
            assert gmv_text == _money_text(overview["kpis"]["current"]["gmv"])
            # The funnel: counts per step and in-progress apart from drop-off; inquiry as its own stage.
            funnel = overview["funnel"]
            for step, count in enumerate(funnel["counts"], start=1):
                assert int(await page.locator(f'[data-step="{step}"]').get_attribute("data-value")) == count
            for step, waiting in enumerate(funnel["in_progress"][:-1], start=1):
                assert int(await page.locator(f'[data-in-progress="{step}"]').get_attribute("data-value")) == waiting
            inquirers = await page.locator('[data-stage="inquiry"]').get_attribute("data-value")
            assert int(inquirers) == overview["kpis"]["current"]["inquiry_users"]
            # GMV and conversion by day.
            for day in overview["kpis"]["days"]:
                bar = page.locator(f'rect[data-date="{day["date"]}"]')
                assert float(await bar.get_attribute("data-gmv")) == day["gmv"]
            # Channels with spend, ROAS and CAC.
            for item in channels["items"]:
                row = page.locator(f'tr[data-source="{item["source"]}"]')
                assert await row.locator('[data-field="gmv"]').inner_text() == _money_text(item["gmv"])
                assert await row.locator('[data-field="spend"]').inner_text() == _money_text(item["spend"])
            # The product matrix, mismatches first, Chinese names as the API gives them.
            rows = page.locator("tr[data-product]")
            assert await rows.count() == len(matrix["items"])
            mismatched = [item["tier_mismatch"] for item in matrix["items"]]
            shown = [await rows.nth(i).get_attribute("class") == "mismatch" for i in range(await rows.count())]
            assert shown == sorted(mismatched, reverse=True)
            silk = next(item for item in matrix["items"] if item["product_id"] == "sku-silk-dress")
            assert silk["name"] == "真丝连衣裙 Silk dress"
            name_cell = page.locator('tr[data-product="sku-silk-dress"] [data-field="name"]')
            assert await name_cell.inner_text() == silk["name"]
            # RFM heat map and lifecycle counts.
            for cell in overview["rfm"]["cells"]:
                shown_cell = page.locator(f'td[data-r="{cell["r_score"]}"][data-f="{cell["f_score"]}"]')
                assert int(await shown_cell.get_attribute("data-value")) == cell["customers"]
            for stage, count in overview["lifecycle"]["stages"].items():
                row = page.locator(f'tr[data-stage="{stage}"] [data-field="customers"]')
                assert int(await row.get_attribute("data-value")) == count
            # Campaigns (or why they are missing) and health with lag.
            if overview["campaigns"]["status"] == "ok":
                for campaign in overview["campaigns"]["items"]:
                    assert await page.locator(f'[data-campaign="{campaign["campaign_id"]}"]').count() == 1
            else:
                assert "unavailable" in await page.locator("#campaigns-table").inner_text()
            for service in ("ingest", "funnel", "segmentation"):
                assert await page.locator(f'tr[data-service="{service}"]').count() >= 1
            lag = page.locator('tr[data-group="funnel"] [data-field="lag"]')
            assert await lag.inner_text() == "0"
            await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

            # A shorter range: the page asks again and shows the new numbers.
            week_from = (date.fromisoformat(RANGE["to"]) - timedelta(days=7)).isoformat()
            await page.fill("#from", week_from)
            await page.click("#apply")
            await page.wait_for_selector(f'body[data-loaded=true][data-range="{week_from}/{RANGE["to"]}"]',
                                         timeout=30_000)
            week = await _get(gateway, "/v1/overview", **{**RANGE, "from": week_from})
            assert week["kpis"]["current"]["gmv"] != overview["kpis"]["current"]["gmv"]
            shown_gmv = await page.locator('[data-kpi="gmv"]').get_attribute("data-value")
            assert float(shown_gmv) == week["kpis"]["current"]["gmv"]
            assert await page.locator("rect[data-date]").count() == 7
            await page.screenshot(path=str(SCREENSHOTS / "dashboard-week.png"), full_page=True)
            assert errors == []
        finally:
            await browser.close()


def test_the_gateways_own_operations_answer_without_5xx_and_as_their_schema_says(stack):
    """Schemathesis over the gateway's own routes (the forwarded ones are the services' and fuzzed there)."""
    failures: list[str] = []
    calls = fuzz(stack["gateway"], failures, paths=["/v1/overview", "/v1/channels", "/v1/health"])
    assert not failures, "\n".join(failures)
    assert calls > 0
