"""The gateway's own routes (SPEC.md "API surface: gateway"): overview, channels joined with spend, health,
and the dashboard page; every other route is forwarded (proxy.py)."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from libs.common.auth import open_route, requires
from libs.common.events import format_timestamp
from libs.common.http import MOMENT_HELP, JsonResponse, money, parse_as_of, parse_span
from services.gateway.adapters.backends import Backends, BackendUnavailable
from services.gateway.domain.channels import priced_channels, spend_by_source
from services.gateway.domain.periods import changes, previous_period
from services.gateway.runtime import GatewayService
from services.gateway.schemas import ChannelsPublic, HealthPublic, OverviewPublic
from services.gateway.settings import GatewaySettings

router = APIRouter(tags=["gateway"])
ReadKey = Annotated[str, requires("read")]
From = Annotated[str, Query(alias="from", max_length=64, description=f"range start, included: {MOMENT_HELP}")]
To = Annotated[str, Query(alias="to", max_length=64, description=f"range end, excluded: {MOMENT_HELP}")]
AsOf = Annotated[str | None, Query(max_length=64,
                                   description="RFC 3339 timestamp; only events up to it count (default: now)")]

DEV_READ_KEY = "dev-read-key"
STATIC = Path(__file__).resolve().parent / "static"
# Spend pages read for one answer: a range of max_days days has at most max_days entries per source.
_SPEND_PAGE, _SPEND_PAGES = 1000, 100


def _service(request: Request) -> GatewayService:
    return request.app.state.service


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.service.settings


async def _part(fetch: Awaitable[dict[str, Any]], within_seconds: float) -> dict[str, Any]:
    """A part of an answer: its figures with ``status: ok``, or ``status: unavailable`` with the reason."""
    try:
        async with asyncio.timeout(within_seconds):
            return {**await fetch, "status": "ok"}
    except BackendUnavailable as exc:
        return {"status": "unavailable", "service": exc.service, "reason": exc.reason}
    except TimeoutError:
        return {"status": "unavailable", "reason": f"no answer within {within_seconds:g} s"}


@router.get("/v1/overview", response_model=OverviewPublic,
            summary="KPIs beside the previous period, funnel, lifecycle, RFM, tiers and campaigns in one answer")
async def get_overview(request: Request, key: ReadKey, start: From, end: To, as_of: AsOf = None) -> JsonResponse:
    """Each part comes from its service, all fetched at once; a service that is down or slower than
    ``part_timeout_seconds`` leaves its part ``unavailable`` (with the reason) and the rest still answers.
    Lifecycle, RFM and tier counts are taken at the end of the range (``segments_as_of``: the earlier of
    ``to`` and ``as_of``)."""
    settings = _settings(request)
    start_at, end_at = parse_span(start, end, settings.common.zone, settings.common.max_range_days)
    moment = parse_as_of(as_of, datetime.now(UTC))
    before_start, before_end = previous_period(start_at, end_at)
    segments_at = min(end_at, moment)
    backends = _service(request).backends
    span = {"from": format_timestamp(start_at), "to": format_timestamp(end_at), "as_of": format_timestamp(moment)}
    at = {"as_of": format_timestamp(segments_at)}
    timeout = settings.part_timeout_seconds
    kpis, funnel, lifecycle, rfm, tiers, campaigns = await asyncio.gather(
        _part(_kpis(backends, key, span, before_start, before_end), timeout),
        _part(backends.get_json("funnel", "/v1/funnels/default/result", key=key, params=span), timeout),
        _part(backends.get_json("segmentation", "/v1/lifecycle", key=key, params=at), timeout),
        _part(backends.get_json("segmentation", "/v1/rfm", key=key, params=at), timeout),
        _part(backends.get_json("segmentation", "/v1/tiers", key=key, params=at), timeout),
        _part(_campaigns(backends, key, moment, settings.overview_campaigns), timeout),
    )
    return JsonResponse({
        **span, "time_zone": settings.common.timezone,
        "previous": {"from": format_timestamp(before_start), "to": format_timestamp(before_end)},
        "segments_as_of": at["as_of"],
        "kpis": kpis, "funnel": funnel, "lifecycle": lifecycle, "rfm": rfm, "tiers": tiers, "campaigns": campaigns,
    })


async def _kpis(backends: Backends, key: str, span: dict[str, str], before_start: datetime,
                before_end: datetime) -> dict[str, Any]:
    previous_span = {**span, "from": format_timestamp(before_start), "to": format_timestamp(before_end)}
    current, previous = await asyncio.gather(
        backends.get_json("funnel", "/v1/kpis", key=key, params={**span, "granularity": "day"}),
        backends.get_json("funnel", "/v1/kpis", key=key, params={**previous_span, "granularity": "range"}),
    )
    days = current.pop("days", None) or []
    return {"current": current, "previous": previous, "change": changes(current, previous), "days": days}


async def _campaigns(backends: Backends, key: str, moment: datetime, limit: int) -> dict[str, Any]:
    if limit == 0:
        return {"items": []}
    listing = await backends.get_json("campaigns", "/v1/campaigns", key=key, params={"limit": limit})
    campaigns = listing.get("items", [])[:limit]

    async def summary(campaign: dict[str, Any]) -> dict[str, Any]:
        path = f"/v1/campaigns/{campaign['campaign_id']}/report"
        try:
            report = await backends.get_json("campaigns", path, key=key, params={"as_of": format_timestamp(moment)})
        except BackendUnavailable as exc:
            report = {"status": "unavailable", "reason": exc.reason}
        return {key_: campaign.get(key_) for key_ in ("campaign_id", "name", "status", "audience", "start_at",
                                                      "end_at")} | {"report": report}

    return {"items": list(await asyncio.gather(*(summary(c) for c in campaigns)))}


@router.get("/v1/channels", response_model=ChannelsPublic,
            summary="Channel metrics joined with spend: spend, roas and cac per source")
async def get_channels(request: Request, key: ReadKey, start: From, end: To, as_of: AsOf = None) -> JsonResponse:
    """The funnel's figures per source (orders by their channel, SPEC.md "Channel of an order") with the
    campaigns service's spend over the same range. Without the campaigns service the figures still answer,
    with spend, roas and cac null and ``spend.status`` unavailable; without the funnel, 502/503/504."""
    settings = _settings(request)
    start_at, end_at = parse_span(start, end, settings.common.zone, settings.common.max_range_days)
    moment = parse_as_of(as_of, datetime.now(UTC))
    span = {"from": format_timestamp(start_at), "to": format_timestamp(end_at), "as_of": format_timestamp(moment)}
    backends = _service(request).backends

    async def funnel_channels() -> dict[str, Any]:
        try:
            return await backends.get_json("funnel", "/v1/channels", key=key, params=span)
        except BackendUnavailable as exc:
            raise exc.as_api_error() from None

    channels, spend = await asyncio.gather(
        funnel_channels(),
        _part(_spend(backends, key, span["from"], span["to"]), settings.part_timeout_seconds),
    )
    totals: dict[str, Decimal] = spend.pop("totals", {})
    items = [
        {**item, "spend": money(item["spend"]), "roas": _ratio(item["roas"]), "cac": money(item["cac"])}
        for item in priced_channels(channels["items"], totals)
    ]
    return JsonResponse({**span, "items": items, "spend": spend})


async def _spend(backends: Backends, key: str, start: str, end: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    cursor = None
    for _ in range(_SPEND_PAGES):
        params = {"from": start, "to": end, "limit": _SPEND_PAGE} | ({"cursor": cursor} if cursor else {})
        page = await backends.get_json("campaigns", "/v1/spend", key=key, params=params)
        entries.extend(page.get("items", []))
        cursor = page.get("next_cursor")
        if not cursor:
            return {"totals": spend_by_source(entries), "entries": len(entries)}
    raise BackendUnavailable("campaigns", f"more than {_SPEND_PAGES * _SPEND_PAGE} spend entries in the range")


def _ratio(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@router.get("/v1/health", response_model=HealthPublic,
            summary="Every service: status, version, consumer lag per group, last processed event, dead letters")
async def get_health(request: Request, _key: ReadKey) -> JsonResponse:
    """Each service's /readyz read at once; ``status`` is ``ready`` only when every deployed service is."""
    return JsonResponse(await _service(request).health())


@router.get("/", response_class=HTMLResponse, dependencies=[open_route()],
            summary="The dashboard (reads only this API, with your read key)")
async def dashboard(request: Request) -> HTMLResponse:
    """The page; in local mode its key field starts with the development read key (when configured)."""
    settings = _settings(request)
    keys = request.app.state.api_keys
    local = settings.common.env in ("local", "test")
    default_key = DEV_READ_KEY if local and (keys.scopes_of(DEV_READ_KEY) or frozenset()) & {"read", "admin"} else ""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(page.replace("{{DEFAULT_KEY}}", html.escape(default_key)))


def _asset(name: str, media_type: str) -> Response:
    # Small files: answered whole (a file response would also watch for the client's disconnect).
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/dashboard.js", dependencies=[open_route()], include_in_schema=False)
async def dashboard_script() -> Response:
    return _asset("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/dashboard/dashboard.css", dependencies=[open_route()], include_in_schema=False)
async def dashboard_style() -> Response:
    return _asset("dashboard.css", "text/css; charset=utf-8")
