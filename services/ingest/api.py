"""Routes of the ingest service (SPEC.md "API surface: ingest")."""

from __future__ import annotations

import logging
import zlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import AfterValidator, BaseModel, Field

from libs.common.auth import AdminKey, requires
from libs.common.events import MAX_NESTING, EventRejected, ValidationContext, nesting_depth
from libs.common.http import ApiError, JsonResponse
from libs.common.kafka import BrokerUnavailable
from libs.common.segment import Ignored
from libs.common.service import Service
from services.ingest.adapters.rejected import list_rejected, load_rejected, mark_replayed
from services.ingest.intake import Format, Outcome, publish, sort_out, validate_one
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])
# ingest keys ship inside storefronts and SDKs: they post events and nothing else (SPEC.md "Auth").
IngestKey = Annotated[str, requires("ingest")]
# The Segment-compatible routes also take the key as the HTTP Basic user name (Segment's write key).
WriteKey = Annotated[str, requires("ingest", basic=True)]


class RejectedItem(BaseModel):
    index: int
    error: str


class IgnoredItem(BaseModel):
    index: int
    reason: str


class IngestResult(BaseModel):
    accepted: int = Field(description="events the broker acknowledged; each will be counted")
    rejected: list[RejectedItem] = Field(description="kept on shoploop.events.rejected.v1; see GET /v1/rejected")
    ignored: list[IgnoredItem] = Field(description="Segment calls shoploop does not use, with the reason")


class RejectedPublic(BaseModel):
    rejection_id: str
    received_at: str
    format: Literal["native", "segment"]
    route: str
    index: int
    error: str
    raw: Any
    replayed_at: str | None
    replayed_event_id: str | None


class RejectedPage(BaseModel):
    items: list[RejectedPublic]
    next_cursor: str | None


def _readable_event(event: dict[str, Any]) -> dict[str, Any]:
    # This body is read by FastAPI, not by _parse_json: the same limits, and integers past 64 bits (which the
    # standard library keeps and orjson refuses to write, as the limits and the rejected-events topic do).
    if nesting_depth(event, _MAX_BODY_NESTING) > _MAX_BODY_NESTING:
        raise ValueError(f"nests deeper than {_MAX_BODY_NESTING} levels")
    try:
        orjson.dumps(event)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be kept as an event: {exc}") from None
    return event


class ReplayItem(BaseModel):
    rejection_id: str = Field(max_length=64)
    event: Annotated[dict[str, Any], AfterValidator(_readable_event)] | None = Field(
        default=None, description="the corrected event (same format as the original); omit to resend it as it was"
    )


class ReplayRequest(BaseModel):
    # The per-request event limit (a setting) applies too; this bound only stops parsing early.
    items: list[ReplayItem] = Field(min_length=1, max_length=100_000)


class ReplayRejected(BaseModel):
    index: int
    rejection_id: str
    error: str


class ReplayResult(BaseModel):
    accepted: int
    rejected: list[ReplayRejected]
    ignored: list[IgnoredItem]


_EXAMPLE = {
    "events": [
        {"event_id": "evt-1", "type": "view", "user_id": "u-42", "occurred_at": "2026-05-01T10:00:00+08:00",
         "channel": {"source": "douyin", "medium": "cpc"},
         "product": {"product_id": "sku-1", "name": "真丝连衣裙", "category": "dresses", "price": 399.00}},
    ]
}


def _settings(request: Request) -> IngestSettings:
    return request.app.state.service.settings


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "request_too_large", f"request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "request_too_large", f"request body exceeds the limit of {limit} bytes")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        return _gunzip(bytes(body), limit)
    return bytes(body)


def _gunzip(body: bytes, limit: int) -> bytes:
    """One gzip member, whole, inflating to at most ``limit`` bytes; nothing may follow it."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "invalid_body", f"body is not valid gzip: {exc}") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise ApiError(413, "request_too_large", f"uncompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise ApiError(400, "invalid_body", "body is not valid gzip: the gzip member is truncated")
    if inflater.unused_data:
        # A second member or trailing garbage: what would read it is not what was checked.
        raise ApiError(400, "invalid_body",
                       f"body is not valid gzip: {len(inflater.unused_data)} bytes follow the gzip member")
    return plain


# Deeper than any event can be (``properties`` nests at most MAX_NESTING levels inside an event inside a batch):
# such a body is refused whole, before anything serialises it again (orjson and pydantic stop at a few hundred).
_MAX_BODY_NESTING = MAX_NESTING + 16


def _parse_json(body: bytes) -> Any:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if nesting_depth(payload, _MAX_BODY_NESTING) > _MAX_BODY_NESTING:
        raise ApiError(400, "invalid_json", f"body nests deeper than {_MAX_BODY_NESTING} levels of objects and"
                       f" arrays (an event's properties may nest {MAX_NESTING})")
    return payload


async def _check_limits(request: Request, raws: list[Any], key: str) -> None:
    settings = _settings(request)
    limits = settings.limits
    if len(raws) > limits.max_events_per_request:
        raise ApiError(413, "too_many_events",
                       f"{len(raws)} events in one request; the limit is {limits.max_events_per_request}")
    for index, raw in enumerate(raws):
        size = len(orjson.dumps(raw))
        if size > limits.max_event_bytes:
            raise ApiError(413, "event_too_large",
                           f"event {index} is {size} bytes; the limit is {limits.max_event_bytes} bytes per event")
    wait = await request.app.state.rate_limiter.take(key, max(len(raws), 1))
    if wait:
        raise ApiError(429, "rate_limited", f"over this API key's rate limit; retry in {wait} s",
                       headers={"Retry-After": str(wait)})


async def _take_in(
    request: Request, raws: list[Any], *, key: str, fmt: Format, route: str, batch_sent_at: Any = None,
    segment_defaults: dict[str, Any] | None = None,
) -> JsonResponse:
    await _check_limits(request, raws, key)
    service: Service = request.app.state.service
    settings = _settings(request)
    context = ValidationContext(received_at=datetime.now(UTC), currency=settings.common.currency)
    outcome = sort_out(raws, fmt=fmt, route=route, context=context, batch_sent_at=batch_sent_at,
                       segment_defaults=segment_defaults)
    await _publish_or_503(outcome, service, settings)
    counters = request.app.state.ingest_counters
    counters.labels("accepted").inc(len(outcome.events))
    counters.labels("rejected").inc(len(outcome.rejected))
    counters.labels("ignored").inc(len(outcome.ignored))
    # A ready response skips FastAPI re-validating it against the response model (documentation only here).
    return JsonResponse(outcome.answer())


async def _publish_or_503(outcome: Outcome, service: Service, settings: IngestSettings) -> None:
    try:
        await publish(outcome, service.publisher, deadline_seconds=settings.publish_timeout_seconds)
    except BrokerUnavailable as exc:
        log.warning("answering 503: the broker did not acknowledge", extra={"error": str(exc)})
        raise ApiError(503, "broker_unavailable",
                       "the broker did not acknowledge; nothing of this request was accepted, retry it "
                       "(event ids make retries safe)", headers={"Retry-After": "1"}) from None


async def _json_body(request: Request) -> Any:
    return _parse_json(await _read_body(request, _settings(request).limits.max_request_bytes))


@router.post("/v1/events", response_model=IngestResult, summary="Post behaviour events (native form)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"example": _EXAMPLE}}}})
async def post_events(request: Request, key: IngestKey) -> JsonResponse:
    """Body: `{"events": [...]}` or one event object. See README "Event format"."""
    payload = await _json_body(request)
    if isinstance(payload, dict) and "events" in payload:
        raws = payload["events"]
        if not isinstance(raws, list):
            raise ApiError(400, "invalid_shape", "`events` must be a list of event objects")
    elif isinstance(payload, dict):
        raws = [payload]
    else:
        raise ApiError(400, "invalid_shape", 'body must be one event object or {"events": [...]}')
    return await _take_in(request, raws, key=key, fmt="native", route="/v1/events")


@router.post("/v1/batch", response_model=IngestResult, summary="Segment-compatible batch",
             tags=["segment"])
async def segment_batch(request: Request, key: WriteKey) -> JsonResponse:
    """Segment HTTP Tracking API `batch`: write key as the Basic user name (or Bearer)."""
    payload = await _json_body(request)
    if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
        raise ApiError(400, "invalid_shape", 'body must be {"batch": [...]}')
    defaults = {name: payload[name] for name in ("context", "integrations") if isinstance(payload.get(name), dict)}
    return await _take_in(request, payload["batch"], key=key, fmt="segment", route="/v1/batch",
                          batch_sent_at=payload.get("sentAt"), segment_defaults=defaults)


async def _segment_single(request: Request, key: str, call: str) -> JsonResponse:
    payload = await _json_body(request)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_shape", f"body must be one Segment {call} message object")
    return await _take_in(request, [payload], key=key, fmt="segment", route=f"/v1/{call}",
                          segment_defaults={"type": call})


@router.post("/v1/track", response_model=IngestResult, summary="Segment-compatible track", tags=["segment"])
async def segment_track(request: Request, key: WriteKey) -> JsonResponse:
    return await _segment_single(request, key, "track")


@router.post("/v1/identify", response_model=IngestResult, summary="Segment-compatible identify", tags=["segment"])
async def segment_identify(request: Request, key: WriteKey) -> JsonResponse:
    return await _segment_single(request, key, "identify")


@router.get("/v1/rejected", response_model=RejectedPage, summary="List rejected events with their reasons")
async def get_rejected(
    request: Request, _key: AdminKey,
    status: Literal["pending", "replayed", "all"] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    service: Service = request.app.state.service
    async with service.database.read() as connection:
        return await list_rejected(connection, status=status, limit=limit, cursor=cursor)


@router.post("/v1/rejected/replay", response_model=ReplayResult, summary="Re-submit rejected events after correction")
async def replay_rejected(request: Request, body: ReplayRequest, key: AdminKey) -> dict[str, Any]:
    """Each item names a rejection and optionally carries the corrected event; accepted ones are published
    and marked replayed; the others stay listed, with the new reason in the answer. The limits of normal
    intake hold: events per request, bytes per event, and the key's rate limit (413 / 429)."""
    service: Service = request.app.state.service
    settings = _settings(request)
    ids = [item.rejection_id for item in body.items]
    async with service.database.read() as connection:
        stored = await load_rejected(connection, ids)
    await _check_limits(request, [_replayed_raw(item, stored.get(item.rejection_id)) for item in body.items], key)
    context = ValidationContext(received_at=datetime.now(UTC), currency=settings.common.currency)
    outcome = Outcome()
    replayed: dict[str, str] = {}
    for position, item in enumerate(body.items):
        row = stored.get(item.rejection_id)
        error = None
        if row is None:
            error = "unknown rejection_id (it may not be listed yet: retry in a moment)"
        elif row.replayed_us is not None or item.rejection_id in replayed:
            error = f"already replayed as event {row.replayed_event_id or replayed.get(item.rejection_id)}"
        if error is not None:
            outcome.rejected.append({"index": position, "rejection_id": item.rejection_id, "error": error})
            continue
        raw = _replayed_raw(item, row)
        try:
            result = validate_one(raw, index=row.item_index, fmt=row.format, context=context)
        except EventRejected as exc:
            outcome.rejected.append({"index": position, "rejection_id": item.rejection_id, "error": exc.reason})
            continue
        if isinstance(result, Ignored):
            outcome.ignored.append({"index": position, "reason": result.reason})
            continue
        outcome.events.append(result)
        replayed[item.rejection_id] = result.event_id or ""
    await _publish_or_503(outcome, service, settings)
    async with service.database.begin() as connection:
        await mark_replayed(connection, replayed, context.received_at)
    return outcome.answer()




def _replayed_raw(item: ReplayItem, row: Any) -> Any:
    """What a replay item sends: its corrected event, else the stored raw body (None for an unknown id)."""
    if item.event is not None:
        return item.event
    return None if row is None else orjson.loads(row.raw)
