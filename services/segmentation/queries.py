"""The segmentation service's answers: one function per route, taking parsed values and returning the route's
declared model (schemas.py). Routes (api.py) only parse, call one of these and render the result.

Where an answer comes from:
- a profile: the person's own rows by index, ranked against the RFM population's quintile cuts;
- /v1/rfm: customers per (recency, frequency); /v1/lifecycle, /v1/tiers: customers per (stage, tier);
  the cuts and these counts are the population counts kept in memory and moved to the as_of and to the
  facts as they are (population_state.py);
- members without as_of: the stored membership as last published, a keyset walk by person key; members at an
  explicit as_of: an evaluation at that moment (exact for any as_of, and as costly as evaluating everyone).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from libs.common.events import epoch_micros, format_timestamp, from_epoch_micros
from libs.common.http import ApiError, encode_cursor, money
from libs.common.kafka import BrokerUnavailable
from libs.common.privacy import ErasureRequest, publish_erasure
from services.segmentation.adapters.facts import event_counts_of
from services.segmentation.adapters.segments import (
    DuplicateSegmentName,
    add_rule_segment,
    last_published_round,
    member_counts,
    rule_segment,
    rule_segment_count,
    rule_segments,
    stored_members,
)
from services.segmentation.domain.customers import LifecycleStage, MembershipTier
from services.segmentation.domain.rfm import SCORES, RfmSegment
from services.segmentation.domain.rules import Rule
from services.segmentation.membership import remove_rule_segment
from services.segmentation.population import builtin_memberships, evaluate_segments
from services.segmentation.schemas import (
    CustomerPublic,
    ErasureAccepted,
    LifecycleSummary,
    Member,
    MemberPage,
    RfmCell,
    RfmPublic,
    RfmSummary,
    SegmentPage,
    SegmentPublic,
    SegmentRef,
    TierSummary,
)
from services.segmentation.segments import BUILTIN_BY_ID, BUILTIN_SEGMENTS, SegmentDefinition, SegmentKind

if TYPE_CHECKING:
    from services.segmentation.runtime import SegmentationService

log = logging.getLogger(__name__)


def _moment(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _ref(segment: SegmentDefinition) -> SegmentRef:
    return SegmentRef(segment_id=segment.segment_id, name=segment.name, kind=segment.kind)


async def customer_profile(service: SegmentationService, person_key: str, as_of: datetime) -> CustomerPublic:
    """One customer at as_of (SPEC.md "Customers"); 404 unknown_customer without an event at or before it."""
    thresholds = service.thresholds
    cuts = (await service.population.at(as_of)).cuts()
    async with service.database.read() as connection:
        definitions = await rule_segments(connection)
        evaluation = await evaluate_segments(connection, as_of, thresholds, definitions, [person_key],
                                             always_load_traits=True, cuts=cuts)
        customer = evaluation.population.customers.get(person_key)
        if customer is None:
            raise ApiError(404, "unknown_customer", f"no customer {person_key!r} with events at or before as_of")
        counts = await event_counts_of(connection, person_key, ("inquiry", "review"), epoch_micros(as_of))
    figures = customer.figures
    score = evaluation.population.rfm_scores.get(person_key)
    by_id = {**BUILTIN_BY_ID, **{segment.segment_id: segment for segment in definitions}}
    order = {segment.segment_id: i for i, segment in enumerate((*BUILTIN_SEGMENTS, *definitions))}
    member_of = sorted(evaluation.memberships.get(person_key, ()), key=order.__getitem__)
    return CustomerPublic(
        person_key=person_key,
        as_of=format_timestamp(as_of),
        first_seen_at=format_timestamp(customer.first_seen_at),
        last_seen_at=format_timestamp(customer.last_seen_at),
        acquisition_source=customer.acquisition_source,
        orders=figures.orders,
        gmv=money(figures.gmv),
        first_order_at=_moment(figures.first_order_at),
        last_order_at=_moment(figures.last_order_at),
        rfm=RfmPublic(
            recency_days=figures.recency_days, frequency=figures.frequency, monetary=money(figures.monetary),
            r_score=score and score.r_score, f_score=score and score.f_score, m_score=score and score.m_score,
            segment=score and score.segment,
        ),
        lifecycle=figures.lifecycle,
        tier=figures.tier,
        repeat_orders_90d=figures.repeat_orders_90d,
        loyalty_milestone=figures.loyalty_milestone,
        inquiries=counts.get("inquiry", 0),
        reviews=counts.get("review", 0),
        traits=evaluation.traits.get(person_key, {}),
        segments=[_ref(by_id[segment_id]) for segment_id in member_of],
    )


async def request_erasure(service: SegmentationService, person_key: str) -> ErasureAccepted:
    """Publish an erasure request on shoploop.privacy.v1; 503 when the broker did not take it."""
    erasure = ErasureRequest.new(person_key, service.clock())
    try:
        await publish_erasure(service.publisher, erasure)
    except BrokerUnavailable as exc:
        log.warning("answering 503: the broker did not acknowledge the erasure request", extra={"error": str(exc)})
        raise ApiError(503, "broker_unavailable", "the broker did not acknowledge; nothing was requested, retry",
                       headers={"Retry-After": "1"}) from None
    return ErasureAccepted(person_key=person_key, requested_at=format_timestamp(erasure.requested_at),
                           request_id=erasure.request_id)


async def rfm_summary(service: SegmentationService, as_of: datetime) -> RfmSummary:
    """Customers per RFM segment and per (R, F) cell at as_of."""
    report = (await service.population.at(as_of)).rfm_counts()
    return RfmSummary(
        as_of=format_timestamp(as_of),
        customers=report.customers,
        segments={segment: report.segment_counts[segment] for segment in RfmSegment},
        cells=[RfmCell(r_score=r, f_score=f, customers=report.cell_counts[r, f]) for r in SCORES for f in SCORES],
    )


async def lifecycle_summary(service: SegmentationService, as_of: datetime) -> LifecycleSummary:
    """Customers per lifecycle stage at as_of."""
    customers = (await service.population.at(as_of)).standings
    stages = dict.fromkeys(LifecycleStage, 0)
    for (stage, _), count in customers.items():
        stages[stage] += count
    lifecycle = service.thresholds.lifecycle
    return LifecycleSummary(
        as_of=format_timestamp(as_of), customers=sum(customers.values()), stages=stages,
        thresholds={"new_days": lifecycle.new_days, "active_days": lifecycle.active_days,
                    "dormant_days": lifecycle.dormant_days},
    )


async def tier_summary(service: SegmentationService, as_of: datetime) -> TierSummary:
    """Customers per membership tier at as_of."""
    customers = (await service.population.at(as_of)).standings
    tiers = dict.fromkeys(MembershipTier, 0)
    no_tier = 0
    for (_, tier), count in customers.items():
        if tier is None:
            no_tier += count
        else:
            tiers[tier] += count
    thresholds = service.thresholds.tiers
    return TierSummary(
        as_of=format_timestamp(as_of), customers=sum(customers.values()), tiers=tiers, no_tier=no_tier,
        thresholds={"silver": float(thresholds.silver), "gold": float(thresholds.gold),
                    "diamond": float(thresholds.diamond)},
    )


def _public(segment: SegmentDefinition, members: dict[str, int]) -> SegmentPublic:
    return SegmentPublic(segment_id=segment.segment_id, name=segment.name, kind=segment.kind,
                         rule=segment.rule_json, created_at=_moment(segment.created_at),
                         members=members.get(segment.segment_id, 0))


async def create_segment(service: SegmentationService, name: str, rule: Rule, rule_json: Any) -> SegmentPublic:
    """Store a validated rule segment (409 segment_name_taken) and have the scheduler evaluate everyone."""
    if name in BUILTIN_BY_ID:
        raise ApiError(409, "segment_name_taken", f"{name!r} is a built-in segment")
    segment = SegmentDefinition(segment_id=f"seg-{uuid.uuid4().hex[:16]}", name=name, kind=SegmentKind.RULE,
                                rule=rule, created_at=service.clock(), rule_json=rule_json)
    max_segments = service.settings.rule_segments.max_segments
    try:
        async with service.database.begin() as connection:
            # Every rule segment is evaluated for every customer in every round: their number is bounded.
            if await rule_segment_count(connection) >= max_segments:
                raise ApiError(409, "too_many_segments",
                               f"there are {max_segments} rule segments, the limit; delete one first")
            await add_rule_segment(connection, segment)
    except DuplicateSegmentName:
        raise ApiError(409, "segment_name_taken", f"a segment named {name!r} exists") from None
    service.scheduler.request_full_evaluation()
    return _public(segment, {})


async def delete_segment(service: SegmentationService, segment_id: str) -> None:
    """Delete a rule segment, its members exiting it (409 built_in, 404 unknown_segment)."""
    if segment_id in BUILTIN_BY_ID:
        raise ApiError(409, "built_in", f"{segment_id!r} is a built-in segment and cannot be deleted")
    async with service.database.begin() as connection:
        segment = await rule_segment(connection, segment_id)
        if segment is None or not await remove_rule_segment(connection, segment, service.clock()):
            raise ApiError(404, "unknown_segment", f"no segment {segment_id!r}")
    service.scheduler.request_full_evaluation()  # publishes the exits now, not at the next interval


async def segment_page(service: SegmentationService, after: str | None, limit: int) -> SegmentPage:
    """Built-in segments first, then rule segments oldest first (a stable order: a segment id is a cursor)."""
    async with service.database.read() as connection:
        definitions = await rule_segments(connection)
        members = await member_counts(connection)
    every = [*BUILTIN_SEGMENTS, *definitions]
    start = 0
    if after is not None:
        ids = [segment.segment_id for segment in every]
        if after not in ids:
            raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
        start = ids.index(after) + 1
    page = every[start:start + limit]
    more = start + limit < len(every)
    return SegmentPage(items=[_public(segment, members) for segment in page],
                       next_cursor=encode_cursor([page[-1].segment_id]) if more and page else None)


async def member_page(service: SegmentationService, segment_id: str, as_of: datetime | None, after: str | None,
                      limit: int) -> MemberPage:
    """A segment's members by person key after ``after``: without as_of, the stored membership as last published
    (reported at the last round of everyone; before any round, evaluated now); with as_of, evaluated then."""
    async with service.database.read() as connection:
        segment = BUILTIN_BY_ID.get(segment_id) or await rule_segment(connection, segment_id)
        if segment is None:
            raise ApiError(404, "unknown_segment", f"no segment {segment_id!r}")
        if as_of is None:
            published_us = await last_published_round(connection)
            if published_us is not None:
                found = await stored_members(connection, segment_id, after, limit + 1)
                return _member_page(segment_id, from_epoch_micros(published_us), "published", found, limit)
            as_of = service.clock()
        if segment.rule is None:
            standings = await builtin_memberships(connection, as_of, service.thresholds)
            members = sorted(person for person, ids, _ in standings if segment_id in ids)
        else:
            evaluation = await evaluate_segments(connection, as_of, service.thresholds, [segment])
            members = sorted(person for person, ids in evaluation.memberships.items() if segment_id in ids)
    if after is not None:
        members = [person for person in members if person > after]
    return _member_page(segment_id, as_of, "evaluated", members[:limit + 1], limit)


def _member_page(segment_id: str, as_of: datetime, membership: Literal["published", "evaluated"], found: list[str], limit: int) -> MemberPage:
    page = found[:limit]
    return MemberPage(segment_id=segment_id, as_of=format_timestamp(as_of), membership=membership,
                      items=[Member(person_key=person) for person in page],
                      next_cursor=encode_cursor([page[-1]]) if len(found) > limit else None)
