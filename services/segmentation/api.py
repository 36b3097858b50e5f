"""Routes of the segmentation service (SPEC.md "API surface: segmentation")."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from libs.common.auth import requires
from libs.common.events import epoch_micros, format_timestamp
from libs.common.http import ApiError, decode_cursor, encode_cursor, money, parse_as_of
from libs.common.kafka import BrokerUnavailable
from libs.common.privacy import ErasureRequest, publish_erasure
from services.segmentation.adapters.facts import event_type_counts
from services.segmentation.adapters.segments import (
    DuplicateSegmentName,
    add_rule_segment,
    member_counts,
    rule_segment,
    rule_segment_count,
    rule_segments,
)
from services.segmentation.domain.customers import LifecycleStage, MembershipTier
from services.segmentation.domain.rfm import SCORES, RfmSegment
from services.segmentation.domain.rules import RuleError, parse_rule
from services.segmentation.membership import remove_rule_segment
from services.segmentation.population import (
    builtin_memberships,
    evaluate_segments,
    lifecycle_and_tiers,
    load_rfm_counts,
)
from services.segmentation.runtime import SegmentationService
from services.segmentation.segments import BUILTIN_BY_ID, BUILTIN_SEGMENTS, SegmentDefinition, SegmentKind

log = logging.getLogger(__name__)
router = APIRouter(tags=["segmentation"])
ReadKey = Annotated[str, requires("read")]
# Defining segments is the marketing operator's job, like defining campaigns.
CampaignsKey = Annotated[str, requires("campaigns")]
# Erasure is irreversible and reaches every service (SPEC.md "Auth").
AdminKey = Annotated[str, requires("admin")]
# A person key may hold "/" (and end with one): the path form takes the rest of the path, the query form anything.
QueryPersonKey = Annotated[str, Query(description="the person key, URL-encoded", min_length=1, max_length=300)]
AsOf = Annotated[str | None, Query(description="RFC 3339 timestamp (default: now); encode + as %2B",
                                   examples=["2026-05-01T00:00:00Z"])]


class RfmPublic(BaseModel):
    recency_days: int | None = Field(description="whole days since the last completed order")
    frequency: int = Field(description="completed orders in the 365-day lookback")
    monetary: float = Field(description="their gmv")
    r_score: int | None = Field(description="1..5; null outside the RFM population")
    f_score: int | None
    m_score: int | None
    segment: RfmSegment | None


class SegmentRef(BaseModel):
    segment_id: str
    name: str
    kind: SegmentKind


class CustomerPublic(BaseModel):
    person_key: str
    as_of: str
    first_seen_at: str
    last_seen_at: str
    acquisition_source: str = Field(description="channel source of the person's first event")
    orders: int
    gmv: float
    first_order_at: str | None
    last_order_at: str | None
    rfm: RfmPublic
    lifecycle: LifecycleStage
    tier: MembershipTier | None
    repeat_orders_90d: int
    loyalty_milestone: bool
    inquiries: int
    reviews: int
    traits: dict[str, Any]
    segments: list[SegmentRef]


class RfmCell(BaseModel):
    r_score: int
    f_score: int
    customers: int


class RfmSummary(BaseModel):
    as_of: str
    customers: int = Field(description="customers with a completed order in the 365-day lookback")
    segments: dict[RfmSegment, int]
    cells: list[RfmCell]


class LifecycleSummary(BaseModel):
    as_of: str
    customers: int = Field(description="persons with an event at or before as_of")
    stages: dict[LifecycleStage, int]
    thresholds: dict[str, int]


class TierSummary(BaseModel):
    as_of: str
    customers: int
    tiers: dict[MembershipTier, int]
    no_tier: int = Field(description="customers without gmv in the lookback")
    thresholds: dict[str, float]


class SegmentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    rule: Any = Field(description="rule tree; see docs/segmentation.md",
                      examples=[{"all": [{"field": "lifecycle", "op": "eq", "value": "dormant"},
                                         {"field": "tier", "op": "in", "value": ["gold", "diamond"]}]}])


class SegmentPublic(BaseModel):
    segment_id: str
    name: str
    kind: SegmentKind
    rule: Any = None
    created_at: str | None = None
    members: int = Field(description="members as last published on shoploop.segments.v1")


class SegmentPage(BaseModel):
    items: list[SegmentPublic]
    next_cursor: str | None


class Member(BaseModel):
    person_key: str


class MemberPage(BaseModel):
    segment_id: str
    as_of: str
    items: list[Member]
    next_cursor: str | None


class ErasureAccepted(BaseModel):
    person_key: str
    requested_at: str
    request_id: str


def _service(request: Request) -> SegmentationService:
    return request.app.state.service


def _as_of(request: Request, as_of: str | None) -> datetime:
    return parse_as_of(as_of, _service(request).clock())


def _moment(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _ref(segment: SegmentDefinition) -> dict[str, Any]:
    return {"segment_id": segment.segment_id, "name": segment.name, "kind": segment.kind}


@router.get("/v1/customers", response_model=CustomerPublic, summary="One customer's profile at as_of (key as a query)")
async def get_customer_by_query(request: Request, person_key: QueryPersonKey, _key: ReadKey,
                                as_of: AsOf = None) -> dict[str, Any]:
    """The same as `GET /v1/customers/{person_key}`, for clients that cannot put any key in a path."""
    return await _customer(request, person_key, as_of)


@router.get("/v1/customers/{person_key:path}", response_model=CustomerPublic,
            summary="One customer's profile at as_of")
async def get_customer(request: Request, person_key: str, _key: ReadKey, as_of: AsOf = None) -> dict[str, Any]:
    """The person key is the rest of the path, URL-decoded: it may hold "/" and end with one."""
    return await _customer(request, person_key, as_of)


async def _customer(request: Request, person_key: str, as_of: str | None) -> dict[str, Any]:
    _check_person_key(person_key)
    service = _service(request)
    moment = _as_of(request, as_of)
    async with service.database.read() as connection:
        definitions = await rule_segments(connection)
        evaluation = await evaluate_segments(connection, moment, service.thresholds, definitions, [person_key],
                                             always_load_traits=True)
        customer = evaluation.population.customers.get(person_key)
        if customer is None:
            raise ApiError(404, "unknown_customer", f"no customer {person_key!r} with events at or before as_of")
        moment_us = epoch_micros(moment)
        inquiries = await event_type_counts(connection, "inquiry", None, moment_us, [person_key])
        reviews = await event_type_counts(connection, "review", None, moment_us, [person_key])
    figures = customer.figures
    score = evaluation.population.rfm_scores.get(person_key)
    by_id = {**BUILTIN_BY_ID, **{segment.segment_id: segment for segment in definitions}}
    order = {segment.segment_id: i for i, segment in enumerate((*BUILTIN_SEGMENTS, *definitions))}
    member_of = sorted(evaluation.memberships.get(person_key, ()), key=order.__getitem__)
    return {
        "person_key": person_key,
        "as_of": format_timestamp(moment),
        "first_seen_at": format_timestamp(customer.first_seen_at),
        "last_seen_at": format_timestamp(customer.last_seen_at),
        "acquisition_source": customer.acquisition_source,
        "orders": figures.orders,
        "gmv": money(figures.gmv),
        "first_order_at": _moment(figures.first_order_at),
        "last_order_at": _moment(figures.last_order_at),
        "rfm": {
            "recency_days": figures.recency_days, "frequency": figures.frequency,
            "monetary": money(figures.monetary),
            "r_score": score and score.r_score, "f_score": score and score.f_score,
            "m_score": score and score.m_score, "segment": score and score.segment,
        },
        "lifecycle": figures.lifecycle,
        "tier": figures.tier,
        "repeat_orders_90d": figures.repeat_orders_90d,
        "loyalty_milestone": figures.loyalty_milestone,
        "inquiries": inquiries.get(person_key, 0),
        "reviews": reviews.get(person_key, 0),
        "traits": evaluation.traits.get(person_key, {}),
        "segments": [_ref(by_id[segment_id]) for segment_id in member_of],
    }


def _check_person_key(person_key: str) -> None:
    if not 1 <= len(person_key) <= 300:
        raise ApiError(422, "invalid_person_key", "person_key must have 1 to 300 characters")


@router.delete("/v1/customers", status_code=202, response_model=ErasureAccepted,
               summary="Erase a customer's personal data in every service (key as a query)")
async def delete_customer_by_query(request: Request, person_key: QueryPersonKey, _key: AdminKey) -> dict[str, Any]:
    """The same as `DELETE /v1/customers/{person_key}`, for clients that cannot put any key in a path."""
    return await _erase(request, person_key)


@router.delete("/v1/customers/{person_key:path}", status_code=202, response_model=ErasureAccepted,
               summary="Erase a customer's personal data in every service")
async def delete_customer(request: Request, person_key: str, _key: AdminKey) -> dict[str, Any]:
    """Publishes an erasure request on `shoploop.privacy.v1`; every service (this one included) consumes it
    and deletes the person's personal data. Aggregate counts already published stay. The person key is the
    rest of the path, URL-decoded: it may hold "/" and end with one."""
    return await _erase(request, person_key)


async def _erase(request: Request, person_key: str) -> dict[str, Any]:
    service = _service(request)
    _check_person_key(person_key)
    erasure = ErasureRequest.new(person_key, service.clock())
    try:
        await publish_erasure(service.publisher, erasure)
    except BrokerUnavailable as exc:
        log.warning("answering 503: the broker did not acknowledge the erasure request", extra={"error": str(exc)})
        raise ApiError(503, "broker_unavailable", "the broker did not acknowledge; nothing was requested, retry",
                       headers={"Retry-After": "1"}) from None
    return {"person_key": person_key, "requested_at": format_timestamp(erasure.requested_at),
            "request_id": erasure.request_id}


@router.get("/v1/rfm", response_model=RfmSummary, summary="Customers per RFM segment and per (R, F) score cell")
async def get_rfm(request: Request, _key: ReadKey, as_of: AsOf = None) -> dict[str, Any]:
    service = _service(request)
    moment = _as_of(request, as_of)
    async with service.database.read() as connection:
        report = await load_rfm_counts(connection, moment)
    return {
        "as_of": format_timestamp(moment),
        "customers": report.customers,
        "segments": {segment: report.segment_counts[segment] for segment in RfmSegment},
        "cells": [{"r_score": r, "f_score": f, "customers": report.cell_counts[r, f]} for r in SCORES for f in SCORES],
    }


@router.get("/v1/lifecycle", response_model=LifecycleSummary, summary="Customers per lifecycle stage")
async def get_lifecycle(request: Request, _key: ReadKey, as_of: AsOf = None) -> dict[str, Any]:
    service = _service(request)
    moment = _as_of(request, as_of)
    async with service.database.read() as connection:
        customers = await lifecycle_and_tiers(connection, moment, service.thresholds)
    stages = dict.fromkeys(LifecycleStage, 0)
    for (stage, _), count in customers.items():
        stages[stage] += count
    lifecycle = service.thresholds.lifecycle
    return {
        "as_of": format_timestamp(moment), "customers": sum(customers.values()), "stages": stages,
        "thresholds": {"new_days": lifecycle.new_days, "active_days": lifecycle.active_days,
                       "dormant_days": lifecycle.dormant_days},
    }


@router.get("/v1/tiers", response_model=TierSummary, summary="Customers per membership tier")
async def get_tiers(request: Request, _key: ReadKey, as_of: AsOf = None) -> dict[str, Any]:
    service = _service(request)
    moment = _as_of(request, as_of)
    async with service.database.read() as connection:
        customers = await lifecycle_and_tiers(connection, moment, service.thresholds)
    tiers = dict.fromkeys(MembershipTier, 0)
    no_tier = 0
    for (_, tier), count in customers.items():
        if tier is None:
            no_tier += count
        else:
            tiers[tier] += count
    thresholds = service.thresholds.tiers
    return {
        "as_of": format_timestamp(moment), "customers": sum(customers.values()), "tiers": tiers,
        "no_tier": no_tier,
        "thresholds": {"silver": float(thresholds.silver), "gold": float(thresholds.gold),
                       "diamond": float(thresholds.diamond)},
    }


def _public(segment: SegmentDefinition, members: dict[str, int]) -> dict[str, Any]:
    return {**_ref(segment), "rule": segment.rule_json, "created_at": _moment(segment.created_at),
            "members": members.get(segment.segment_id, 0)}


@router.post("/v1/segments", status_code=201, response_model=SegmentPublic, summary="Define a rule segment")
async def create_segment(request: Request, body: SegmentCreate, _key: CampaignsKey) -> dict[str, Any]:
    """The rule is validated (unknown field or operator: 422 with the reason) and kept as data; members
    enter (and later exit) through `shoploop.segments.v1` once the scheduler has evaluated it."""
    service = _service(request)
    caps = service.settings.rule_segments
    try:
        rule = parse_rule(body.rule, caps.limits())
    except RuleError as exc:
        raise ApiError(422, "invalid_rule", str(exc)) from None
    if body.name in BUILTIN_BY_ID:
        raise ApiError(409, "segment_name_taken", f"{body.name!r} is a built-in segment")
    segment = SegmentDefinition(segment_id=f"seg-{uuid.uuid4().hex[:16]}", name=body.name, kind=SegmentKind.RULE,
                                rule=rule, created_at=service.clock(), rule_json=body.rule)
    try:
        async with service.database.begin() as connection:
            # Every rule segment is evaluated for every customer in every round: their number is bounded.
            if await rule_segment_count(connection) >= caps.max_segments:
                raise ApiError(409, "too_many_segments",
                               f"there are {caps.max_segments} rule segments, the limit; delete one first")
            await add_rule_segment(connection, segment)
    except DuplicateSegmentName:
        raise ApiError(409, "segment_name_taken", f"a segment named {body.name!r} exists") from None
    service.scheduler.request_full_evaluation()
    return _public(segment, {})


@router.delete("/v1/segments/{segment_id}", status_code=204, summary="Delete a rule segment")
async def delete_segment(request: Request, segment_id: str, _key: CampaignsKey) -> Response:
    """Its members exit it (published on `shoploop.segments.v1` like any exit); built-in segments cannot be
    deleted (409)."""
    if segment_id in BUILTIN_BY_ID:
        raise ApiError(409, "built_in", f"{segment_id!r} is a built-in segment and cannot be deleted")
    service = _service(request)
    async with service.database.begin() as connection:
        segment = await rule_segment(connection, segment_id)
        if segment is None or not await remove_rule_segment(connection, segment, service.clock()):
            raise ApiError(404, "unknown_segment", f"no segment {segment_id!r}")
    service.scheduler.request_full_evaluation()  # publishes the exits now, not at the next interval
    return Response(status_code=204)


@router.get("/v1/segments", response_model=SegmentPage, summary="Built-in and rule segments")
async def list_segments(
    request: Request, _key: ReadKey, limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str | None = None,
) -> dict[str, Any]:
    service = _service(request)
    async with service.database.read() as connection:
        definitions = await rule_segments(connection)
        members = await member_counts(connection)
    # Built-ins first, then rule segments oldest first: a stable order, so a position is a cursor.
    every = [*BUILTIN_SEGMENTS, *definitions]
    after = decode_cursor(cursor, 1)
    start = 0
    if after is not None:
        ids = [segment.segment_id for segment in every]
        if after[0] not in ids:
            raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
        start = ids.index(after[0]) + 1
    page = every[start:start + limit]
    more = start + limit < len(every)
    return {"items": [_public(segment, members) for segment in page],
            "next_cursor": encode_cursor([page[-1].segment_id]) if more and page else None}


@router.get("/v1/segments/{segment_id}/members", response_model=MemberPage, summary="A segment's members at as_of")
async def list_members(
    request: Request, segment_id: str, _key: ReadKey, as_of: AsOf = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str | None = None,
) -> dict[str, Any]:
    """Members computed at as_of from the stored facts, ordered by person key."""
    service = _service(request)
    moment = _as_of(request, as_of)
    after = decode_cursor(cursor, 1)
    async with service.database.read() as connection:
        segment = BUILTIN_BY_ID.get(segment_id) or await rule_segment(connection, segment_id)
        if segment is None:
            raise ApiError(404, "unknown_segment", f"no segment {segment_id!r}")
        if segment.rule is None:
            standings = await builtin_memberships(connection, moment, service.thresholds)
            found = (person for person, ids, _ in standings if segment_id in ids)
        else:
            evaluation = await evaluate_segments(connection, moment, service.thresholds, [segment])
            found = (person for person, ids in evaluation.memberships.items() if segment_id in ids)
    members = sorted(found)
    if after is not None:
        members = [person for person in members if person > after[0]]
    page = members[:limit]
    return {
        "segment_id": segment_id, "as_of": format_timestamp(moment),
        "items": [{"person_key": person} for person in page],
        "next_cursor": encode_cursor([page[-1]]) if len(members) > limit else None,
    }
