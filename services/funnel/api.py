"""Routes of the funnel service (SPEC.md "API surface: funnel")."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request, Response

from libs.common.auth import ReadKey, requires
from libs.common.events import format_timestamp
from libs.common.http import (
    MOMENT_HELP,
    ApiError,
    JsonResponse,
    decode_cursor,
    encode_cursor,
    parse_as_of,
    parse_span,
)
from services.funnel import reports
from services.funnel.adapters.facts import TooManyFacts
from services.funnel.adapters.funnels import (
    DEFAULT_FUNNEL_ID,
    add_funnel,
    delete_funnel,
    get_funnel,
    list_funnels,
)
from services.funnel.adapters.mirror import FactCopyUnavailable
from services.funnel.domain.funnels import FunnelDefinition, FunnelStep
from services.funnel.engine import channels as engine_channels
from services.funnel.engine import funnels as engine_funnels
from services.funnel.engine import kpis as engine_kpis
from services.funnel.engine import matrix as engine_matrix
from services.funnel.engine import products as engine_products
from services.funnel.runtime import FunnelService
from services.funnel.schemas import (
    ChannelsPublic,
    FunnelCreate,
    FunnelPage,
    FunnelPublic,
    FunnelResultPublic,
    KpisPublic,
    MatrixPage,
    ProductPage,
    channel_public,
    day_public,
    funnel_public,
    funnel_result_public,
    kpis_public,
    matrix_entry_public,
    product_public,
    span_public,
)
from services.funnel.settings import FunnelSettings

router = APIRouter(tags=["funnel"])
# Defining funnels is the marketing operator's job, like defining segments and campaigns (SPEC.md "Auth").
CampaignsKey = Annotated[str, requires("campaigns", max_body_bytes=16 * 1024)]

_DEFAULT_PAGE_SIZE = 100
From = Annotated[str, Query(alias="from", description=f"range start, included: {MOMENT_HELP}")]
To = Annotated[str, Query(alias="to", description=f"range end, excluded: {MOMENT_HELP}")]
AsOf = Annotated[str | None, Query(description="RFC 3339 timestamp; only events up to it count (default: now)")]
Limit = Annotated[int | None, Query(ge=1, description="page size (default 100, at most the service's max_page_size)")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]


def _service(request: Request) -> FunnelService:
    return request.app.state.service


def _settings(request: Request) -> FunnelSettings:
    return request.app.state.service.settings


def _span(request: Request, start: str, end: str) -> tuple[datetime, datetime]:
    settings = _settings(request)
    return parse_span(start, end, settings.common.zone, settings.common.max_range_days)


def _as_of(value: str | None) -> datetime:
    return parse_as_of(value, datetime.now(UTC))


def _max_rows(request: Request) -> int:
    return _settings(request).max_report_rows


async def _bounded(request: Request, answer: Awaitable[T]) -> T:
    """A report computed from loaded facts, or 422 when it would read more rows than the service allows."""
    try:
        return await answer
    except TooManyFacts as exc:
        raise ApiError(422, "range_too_large",
                       f"from/to: {exc} (setting max_report_rows); ask for a shorter range") from None


def _limit(request: Request, limit: int | None) -> int:
    maximum = _settings(request).max_page_size
    if limit is None:
        return min(_DEFAULT_PAGE_SIZE, maximum)
    if limit > maximum:
        raise ApiError(422, "invalid_parameter", f"limit: at most {maximum}")
    return limit


T = TypeVar("T")
# The copy retries a failed sync every quarter second: a second later is the earliest a retry can help.
_COPY_RETRY_AFTER = "1"


async def _on_copy(request: Request, compute: Callable[[Any], T]) -> T:
    """``compute`` on the DuckDB copy of the facts; 503 with Retry-After while the copy cannot answer."""
    try:
        return await _service(request).mirror.query(compute)
    except FactCopyUnavailable as exc:
        raise ApiError(503, "fact_copy_unavailable", f"{exc}; retry later",
                       headers={"Retry-After": _COPY_RETRY_AFTER}) from None


# How long defining a funnel waits for its per-day state to be built (seconds at 10M events; it goes on after).
_FUNNEL_BUILD_WAIT_SECONDS = 60.0


def _after(cursor: str | None) -> str | None:
    """The last product_id of the previous page, from its opaque cursor (400 invalid_cursor if tampered)."""
    after = decode_cursor(cursor, 1)
    return None if after is None else str(after[0])


@router.get("/v1/kpis", response_model=KpisPublic, summary="Full-funnel KPIs over a range, optionally per day")
async def get_kpis(
    request: Request, _key: ReadKey, start: From, end: To,
    granularity: Literal["range", "day"] = "range", as_of: AsOf = None,
) -> JsonResponse:
    """SPEC.md "Daily and range KPIs" over [from, to); `granularity=day` adds `days`, one entry per calendar
    day of the range in the reporting time zone, each computed over that day alone."""
    settings = _settings(request)
    start_at, end_at = _span(request, start, end)
    moment = _as_of(as_of)
    by_day = granularity == "day"
    if by_day and end_at - start_at > timedelta(days=settings.max_days):
        raise ApiError(422, "invalid_parameter", f"granularity=day covers at most {settings.max_days} days")
    time_zone = settings.common.timezone if by_day else None
    totals, days = await _on_copy(
        request, lambda cursor: engine_kpis.kpis(cursor, start_at, end_at, moment, time_zone)
    )
    body: dict[str, Any] = {
        **span_public(start_at, end_at, moment), "granularity": granularity, "time_zone": settings.common.timezone,
        **kpis_public(totals),
    }
    if days is not None:
        body["days"] = [day_public(day, figures) for day, figures in days.items()]
    return JsonResponse(body)


@router.post("/v1/funnels", response_model=FunnelPublic, status_code=201, summary="Define a funnel")
async def create_funnel(request: Request, body: FunnelCreate, _key: CampaignsKey) -> JsonResponse:
    """Results cover the whole stored history, not only events after the definition."""
    definition = FunnelDefinition(
        name=body.name,
        steps=tuple(
            FunnelStep(step.type, **(step.where.model_dump(exclude_none=True) if step.where else {}))
            for step in body.steps
        ),
        window_seconds=body.window_seconds,
        unit=body.unit,
    )
    async with _service(request).database.begin() as connection:
        stored = await add_funnel(connection, str(uuid.uuid4()), definition, datetime.now(UTC))
    # Its per-day state built now (funnel_windows.py), waited for a while: it then answers the first query.
    await _service(request).mirror.build_funnel(definition, _FUNNEL_BUILD_WAIT_SECONDS)
    return JsonResponse(
        funnel_public(stored), status_code=201, headers={"Location": f"/v1/funnels/{stored.funnel_id}"}
    )


@router.get("/v1/funnels", response_model=FunnelPage, summary="List funnels, the built-in `default` first")
async def get_funnels(request: Request, _key: ReadKey, limit: Limit = None, cursor: Cursor = None) -> JsonResponse:
    async with _service(request).database.read() as connection:
        page, next_cursor = await list_funnels(connection, limit=_limit(request, limit), cursor=cursor)
    return JsonResponse({"items": [funnel_public(funnel) for funnel in page], "next_cursor": next_cursor})


@router.get("/v1/funnels/{funnel_id}", response_model=FunnelPublic, summary="One funnel's definition")
async def get_one_funnel(request: Request, funnel_id: str, _key: ReadKey) -> JsonResponse:
    async with _service(request).database.read() as connection:
        stored = await get_funnel(connection, funnel_id)
    if stored is None:
        raise ApiError(404, "not_found", f"no funnel with id {funnel_id!r}")
    return JsonResponse(funnel_public(stored))


@router.delete("/v1/funnels/{funnel_id}", status_code=204, summary="Delete a defined funnel")
async def remove_funnel(request: Request, funnel_id: str, _key: CampaignsKey) -> Response:
    """The built-in `default` cannot be deleted (409). Events are not touched: defining the same funnel again
    answers over the whole history as before."""
    if funnel_id == DEFAULT_FUNNEL_ID:
        raise ApiError(409, "built_in", "the built-in funnel cannot be deleted")
    service = _service(request)
    async with service.database.begin() as connection:
        stored = await get_funnel(connection, funnel_id)
        if stored is None or not await delete_funnel(connection, funnel_id):
            raise ApiError(404, "not_found", f"no funnel with id {funnel_id!r}")
    await service.mirror.drop_funnel(stored.definition)
    return Response(status_code=204)


@router.get("/v1/funnels/{funnel_id}/result", response_model=FunnelResultPublic, summary="A funnel's result")
async def get_funnel_result(
    request: Request, funnel_id: str, _key: ReadKey, start: From, end: To,
    breakdown: Literal["source", "category"] | None = None, as_of: AsOf = None,
) -> JsonResponse:
    """Entrants are units with a first-step event in [from, to); later steps may fall after `to` (SPEC.md
    "Funnel"). `breakdown` splits by the source or category of each unit's first step event in range."""
    start_at, end_at = _span(request, start, end)
    moment = _as_of(as_of)
    service = _service(request)
    async with service.database.read() as connection:
        stored = await get_funnel(connection, funnel_id)
    if stored is None:
        raise ApiError(404, "not_found", f"no funnel with id {funnel_id!r}")
    definition = stored.definition
    service.mirror.want_funnel(definition)  # its per-day state, when one can answer it (built in the background)
    # DuckDB over the copy when the definition is one it answers exactly; else the Python reference.
    result = await _on_copy(
        request, lambda cursor: engine_funnels.funnel_result_sql(cursor, definition, start_at, end_at, moment, breakdown)
    )
    if result is None:
        async with reports.snapshot(service.database) as connection:
            result = await _bounded(request, reports.funnel(connection, definition, start_at, end_at, moment,
                                                            breakdown, max_rows=_max_rows(request)))
    return JsonResponse({
        **span_public(start_at, end_at, moment), "funnel_id": stored.funnel_id, "name": definition.name,
        "unit": definition.unit, "window_seconds": definition.window_seconds, "breakdown_by": breakdown,
        **funnel_result_public(result),
    })


@router.get("/v1/products", response_model=ProductPage, summary="Per product metrics over a range")
async def get_products(
    request: Request, _key: ReadKey, start: From, end: To, as_of: AsOf = None, limit: Limit = None,
    cursor: Cursor = None,
) -> JsonResponse:
    """Products with activity or sales in [from, to), by product_id."""
    start_at, end_at = _span(request, start, end)
    moment = _as_of(as_of)
    limit = _limit(request, limit)
    after = _after(cursor)
    page, more = await _on_copy(
        request, lambda duck: engine_products.product_page(duck, start_at, end_at, moment, after=after, limit=limit)
    )
    return JsonResponse({
        **span_public(start_at, end_at, moment), "items": [product_public(p) for p in page],
        "next_cursor": encode_cursor([page[-1].product_id]) if more else None,
    })


@router.get("/v1/products/matrix", response_model=MatrixPage, summary="Product matrix: suggested vs declared tier")
async def get_product_matrix(
    request: Request, _key: ReadKey, as_of: AsOf = None, limit: Limit = None, cursor: Cursor = None
) -> JsonResponse:
    """Products viewed in the 30 days up to as_of, with suggested tier, declared tier and lifecycle stage."""
    moment = _as_of(as_of)
    limit = _limit(request, limit)
    after = _after(cursor)
    page, more = await _on_copy(request, lambda duck: engine_matrix.matrix_page(duck, moment, after=after, limit=limit))
    return JsonResponse({
        "as_of": format_timestamp(moment), "items": [matrix_entry_public(e) for e in page],
        "next_cursor": encode_cursor([page[-1].product_id]) if more else None,
    })


@router.get("/v1/channels", response_model=ChannelsPublic, summary="Per channel source metrics over a range")
async def get_channels(request: Request, _key: ReadKey, start: From, end: To, as_of: AsOf = None) -> JsonResponse:
    """Sources by name; orders and gmv by the order's channel (SPEC.md "Channel of an order")."""
    start_at, end_at = _span(request, start, end)
    moment = _as_of(as_of)
    metrics = await _on_copy(request, lambda duck: engine_channels.channel_metrics(duck, start_at, end_at, moment))
    return JsonResponse({**span_public(start_at, end_at, moment), "items": [channel_public(m) for m in metrics]})
