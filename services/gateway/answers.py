"""The gateway's own answers (SPEC.md "API surface: gateway"), assembled from the services behind it: the
overview, channels joined with spend, and the health of every service. api.py only parses and calls one of
these; each returns its answer's model (schemas.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime
from decimal import Decimal
from typing import Any

from libs.common.events import format_timestamp
from libs.common.http import money
from services.gateway.adapters.backends import Backends, BackendUnavailable
from services.gateway.domain.channels import priced_channels, spend_by_source
from services.gateway.domain.periods import changes, previous_period
from services.gateway.runtime import GatewayService
from services.gateway.schemas import ChannelsPublic, HealthPublic, OverviewPublic

# Spend pages read for one answer: a range of max_days days has at most max_days entries per source.
_SPEND_PAGE, _SPEND_PAGES = 1000, 100


async def _part(fetch: Awaitable[dict[str, Any]], within_seconds: float) -> dict[str, Any]:
    """A part of an answer: its figures with ``status: ok``, or ``status: unavailable`` with the reason."""
    try:
        async with asyncio.timeout(within_seconds):
            return {**await fetch, "status": "ok"}
    except BackendUnavailable as exc:
        return {"status": "unavailable", "service": exc.service, "reason": exc.reason}
    except TimeoutError:
        return {"status": "unavailable", "reason": f"no answer within {within_seconds:g} s"}


def _span(start: datetime, end: datetime, moment: datetime) -> dict[str, str]:
    return {"from": format_timestamp(start), "to": format_timestamp(end), "as_of": format_timestamp(moment)}


async def overview(service: GatewayService, key: str, start: datetime, end: datetime,
                   moment: datetime) -> OverviewPublic:
    """KPIs beside the previous period, the default funnel, lifecycle, RFM, tiers and campaigns, fetched at once;
    a part whose service is down or slower than ``part_timeout_seconds`` is ``unavailable``. Segments are counted
    at the end of the range (the earlier of ``end`` and ``moment``)."""
    settings = service.settings
    before_start, before_end = previous_period(start, end)
    backends = service.backends
    span = _span(start, end, moment)
    at = {"as_of": format_timestamp(min(end, moment))}
    timeout = settings.part_timeout_seconds
    kpis, funnel, lifecycle, rfm, tiers, campaigns = await asyncio.gather(
        _part(_kpis(backends, key, span, before_start, before_end), timeout),
        _part(backends.get_json("funnel", "/v1/funnels/default/result", key=key, params=span), timeout),
        _part(backends.get_json("segmentation", "/v1/lifecycle", key=key, params=at), timeout),
        _part(backends.get_json("segmentation", "/v1/rfm", key=key, params=at), timeout),
        _part(backends.get_json("segmentation", "/v1/tiers", key=key, params=at), timeout),
        _part(_campaigns(backends, key, moment, settings.overview_campaigns), timeout),
    )
    return OverviewPublic.model_validate({
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


async def channels(service: GatewayService, key: str, start: datetime, end: datetime,
                   moment: datetime) -> ChannelsPublic:
    """The funnel's figures per source with the campaigns service's spend over the same range (spend, roas and
    cac null, and ``spend.status`` unavailable, without it); without the funnel, its 502/503/504."""
    span = _span(start, end, moment)
    backends = service.backends

    async def funnel_channels() -> dict[str, Any]:
        try:
            return await backends.get_json("funnel", "/v1/channels", key=key, params=span)
        except BackendUnavailable as exc:
            raise exc.as_api_error() from None

    figures, spend = await asyncio.gather(
        funnel_channels(),
        _part(_spend(backends, key, span["from"], span["to"]), service.settings.part_timeout_seconds),
    )
    totals: dict[str, Decimal] = spend.pop("totals", {})
    items = [
        {**item, "spend": money(item["spend"]), "roas": _ratio(item["roas"]), "cac": money(item["cac"])}
        for item in priced_channels(figures["items"], totals)
    ]
    return ChannelsPublic.model_validate({**span, "items": items, "spend": spend})


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


async def health(service: GatewayService) -> HealthPublic:
    """Each service's /readyz read at once; ``status`` is ``ready`` only when every deployed service is."""
    return HealthPublic.model_validate(await service.health())
