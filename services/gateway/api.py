"""The gateway's own routes (SPEC.md "API surface: gateway"): overview, channels joined with spend, health,
and the dashboard page; each JSON route parses its input, calls one function of answers.py and renders that
function's model (schemas.py). Every other route is forwarded (proxy.py)."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from libs.common.auth import ReadKey, open_route
from libs.common.http import MOMENT_HELP, parse_as_of, parse_span
from services.gateway import answers
from services.gateway.runtime import GatewayService
from services.gateway.schemas import ChannelsPublic, HealthPublic, OverviewPublic
from services.gateway.settings import GatewaySettings

router = APIRouter(tags=["gateway"])
From = Annotated[str, Query(alias="from", max_length=64, description=f"range start, included: {MOMENT_HELP}")]
To = Annotated[str, Query(alias="to", max_length=64, description=f"range end, excluded: {MOMENT_HELP}")]
AsOf = Annotated[str | None, Query(max_length=64,
                                   description="RFC 3339 timestamp; only events up to it count (default: now)")]

DEV_READ_KEY = "dev-read-key"
STATIC = Path(__file__).resolve().parent / "static"


def _service(request: Request) -> GatewayService:
    return request.app.state.service


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.service.settings


def _span(request: Request, start: str, end: str, as_of: str | None) -> tuple[datetime, datetime, datetime]:
    common = _settings(request).common
    start_at, end_at = parse_span(start, end, common.zone, common.max_range_days)
    return start_at, end_at, parse_as_of(as_of, datetime.now(UTC))


# The answers carry what each service said (parts, channel items): a field the service left out stays out
# (response_model_exclude_unset), so that the model checks the answer without adding nulls to it.
@router.get("/v1/overview", response_model=OverviewPublic, response_model_exclude_unset=True,
            summary="KPIs beside the previous period, funnel, lifecycle, RFM, tiers and campaigns in one answer")
async def get_overview(request: Request, key: ReadKey, start: From, end: To, as_of: AsOf = None) -> OverviewPublic:
    """Each part comes from its service, all fetched at once; a service that is down or slower than
    ``part_timeout_seconds`` leaves its part ``unavailable`` (with the reason) and the rest still answers.
    Lifecycle, RFM and tier counts are taken at the end of the range (``segments_as_of``: the earlier of
    ``to`` and ``as_of``)."""
    return await answers.overview(_service(request), key, *_span(request, start, end, as_of))


@router.get("/v1/channels", response_model=ChannelsPublic, response_model_exclude_unset=True,
            summary="Channel metrics joined with spend: spend, roas and cac per source")
async def get_channels(request: Request, key: ReadKey, start: From, end: To, as_of: AsOf = None) -> ChannelsPublic:
    """The funnel's figures per source (orders by their channel, SPEC.md "Channel of an order") with the
    campaigns service's spend over the same range. Without the campaigns service the figures still answer,
    with spend, roas and cac null and ``spend.status`` unavailable; without the funnel, 502/503/504."""
    return await answers.channels(_service(request), key, *_span(request, start, end, as_of))


@router.get("/v1/health", response_model=HealthPublic, response_model_exclude_unset=True,
            summary="Every service: status, version, consumer lag per group, last processed event, dead letters")
async def get_health(request: Request, _key: ReadKey) -> HealthPublic:
    """Each service's /readyz read at once; ``status`` is ``ready`` only when every deployed service is."""
    return await answers.health(_service(request))


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


@router.get("/dashboard/dashboard.js", response_class=Response, dependencies=[open_route()], include_in_schema=False)
async def dashboard_script() -> Response:
    return _asset("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/dashboard/dashboard.css", response_class=Response, dependencies=[open_route()], include_in_schema=False)
async def dashboard_style() -> Response:
    return _asset("dashboard.css", "text/css; charset=utf-8")
