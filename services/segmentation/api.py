"""Routes of the segmentation service (SPEC.md "API surface: segmentation"): each parses its input, calls one
function of queries.py and renders that function's model (schemas.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from libs.common.auth import AdminKey, ReadKey, requires
from libs.common.http import ApiError, decode_cursor, parse_as_of
from services.segmentation.domain.rules import RuleError, parse_rule
from services.segmentation.queries import (
    create_segment,
    customer_profile,
    delete_segment,
    lifecycle_summary,
    member_page,
    request_erasure,
    rfm_summary,
    segment_page,
    tier_summary,
)
from services.segmentation.runtime import SegmentationService
from services.segmentation.schemas import (
    CustomerPublic,
    ErasureAccepted,
    LifecycleSummary,
    MemberPage,
    RfmSummary,
    SegmentCreate,
    SegmentPage,
    SegmentPublic,
    TierSummary,
)

router = APIRouter(tags=["segmentation"])
# Defining segments is the marketing operator's job, like defining campaigns.
CampaignsKey = Annotated[str, requires("campaigns")]
# A person key may hold "/" (and end with one): the path form takes the rest of the path, the query form anything.
QueryPersonKey = Annotated[str, Query(description="the person key, URL-encoded", min_length=1, max_length=300)]
AsOf = Annotated[str | None, Query(description="RFC 3339 timestamp (default: now); encode + as %2B",
                                   examples=["2026-05-01T00:00:00Z"])]


def _service(request: Request) -> SegmentationService:
    return request.app.state.service


def _as_of(request: Request, as_of: str | None) -> datetime:
    return parse_as_of(as_of, _service(request).clock())


def _after(cursor: str | None) -> str | None:
    after = decode_cursor(cursor, 1)
    return None if after is None else after[0]


def _person_key(person_key: str) -> str:
    if not 1 <= len(person_key) <= 300:
        raise ApiError(422, "invalid_person_key", "person_key must have 1 to 300 characters")
    return person_key


@router.get("/v1/customers", response_model=CustomerPublic, summary="One customer's profile at as_of (key as a query)")
async def get_customer_by_query(request: Request, person_key: QueryPersonKey, _key: ReadKey,
                                as_of: AsOf = None) -> CustomerPublic:
    """The same as `GET /v1/customers/{person_key}`, for clients that cannot put any key in a path."""
    return await customer_profile(_service(request), _person_key(person_key), _as_of(request, as_of))


@router.get("/v1/customers/{person_key:path}", response_model=CustomerPublic,
            summary="One customer's profile at as_of")
async def get_customer(request: Request, person_key: str, _key: ReadKey, as_of: AsOf = None) -> CustomerPublic:
    """The person key is the rest of the path, URL-decoded: it may hold "/" and end with one."""
    return await customer_profile(_service(request), _person_key(person_key), _as_of(request, as_of))


@router.delete("/v1/customers", status_code=202, response_model=ErasureAccepted,
               summary="Erase a customer's personal data in every service (key as a query)")
async def delete_customer_by_query(request: Request, person_key: QueryPersonKey, _key: AdminKey) -> ErasureAccepted:
    """The same as `DELETE /v1/customers/{person_key}`, for clients that cannot put any key in a path."""
    return await request_erasure(_service(request), _person_key(person_key))


@router.delete("/v1/customers/{person_key:path}", status_code=202, response_model=ErasureAccepted,
               summary="Erase a customer's personal data in every service")
async def delete_customer(request: Request, person_key: str, _key: AdminKey) -> ErasureAccepted:
    """Publishes an erasure request on `shoploop.privacy.v1`; every service (this one included) consumes it
    and deletes the person's personal data. Aggregate counts already published stay. The person key is the
    rest of the path, URL-decoded: it may hold "/" and end with one."""
    return await request_erasure(_service(request), _person_key(person_key))


@router.get("/v1/rfm", response_model=RfmSummary, summary="Customers per RFM segment and per (R, F) score cell")
async def get_rfm(request: Request, _key: ReadKey, as_of: AsOf = None) -> RfmSummary:
    return await rfm_summary(_service(request), _as_of(request, as_of))


@router.get("/v1/lifecycle", response_model=LifecycleSummary, summary="Customers per lifecycle stage")
async def get_lifecycle(request: Request, _key: ReadKey, as_of: AsOf = None) -> LifecycleSummary:
    return await lifecycle_summary(_service(request), _as_of(request, as_of))


@router.get("/v1/tiers", response_model=TierSummary, summary="Customers per membership tier")
async def get_tiers(request: Request, _key: ReadKey, as_of: AsOf = None) -> TierSummary:
    return await tier_summary(_service(request), _as_of(request, as_of))


@router.post("/v1/segments", status_code=201, response_model=SegmentPublic, summary="Define a rule segment")
async def post_segment(request: Request, body: SegmentCreate, _key: CampaignsKey) -> SegmentPublic:
    """The rule is validated (unknown field or operator, or over a cap: 422 with the reason) and kept as data;
    members enter (and later exit) through `shoploop.segments.v1` once the scheduler has evaluated it."""
    service = _service(request)
    try:
        rule = parse_rule(body.rule, service.settings.rule_segments.limits())
    except RuleError as exc:
        raise ApiError(422, "invalid_rule", str(exc)) from None
    return await create_segment(service, body.name, rule, body.rule)


@router.delete("/v1/segments/{segment_id}", status_code=204, summary="Delete a rule segment")
async def remove_segment(request: Request, segment_id: str, _key: CampaignsKey) -> Response:
    """Its members exit it (published on `shoploop.segments.v1` like any exit); built-in segments cannot be
    deleted (409)."""
    await delete_segment(_service(request), segment_id)
    return Response(status_code=204)


@router.get("/v1/segments", response_model=SegmentPage, summary="Built-in and rule segments")
async def list_segments(
    request: Request, _key: ReadKey, limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str | None = None,
) -> SegmentPage:
    return await segment_page(_service(request), _after(cursor), limit)


@router.get("/v1/segments/{segment_id}/members", response_model=MemberPage, summary="A segment's members")
async def list_members(
    request: Request, segment_id: str, _key: ReadKey, as_of: AsOf = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str | None = None,
) -> MemberPage:
    """Ordered by person key. Without `as_of`: the membership as last published on `shoploop.segments.v1`
    (`membership: "published"`, `as_of` the last round of everyone), read from stored state; with `as_of`:
    computed at that moment from the stored facts (`membership: "evaluated"`)."""
    moment = None if as_of is None else _as_of(request, as_of)
    return await member_page(_service(request), segment_id, moment, _after(cursor), limit)
