"""What each route of the campaigns API does (SPEC.md "API surface: campaigns" and "Campaigns"): one function per
route, taking the service and the parsed request and returning the answer's model (schemas.py). api.py only parses
and calls one of these; the storage is in adapters/, the rules in domain/."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import cents
from libs.common.events import epoch_micros, format_timestamp, from_epoch_micros
from libs.common.http import ApiError, days_starting_in, money, page_of, parse_timestamp
from services.campaigns.adapters.campaigns import (
    CampaignRecord,
    assignment_rows,
    insert_campaign,
    list_campaigns,
    load_campaign,
    save_campaign,
    touch_rows,
)
from services.campaigns.adapters.orders import coupon_uses
from services.campaigns.adapters.report_state import arm_totals_as_of
from services.campaigns.adapters.spend import set_spend, spend_rows, spend_total_cents
from services.campaigns.adapters.tables import coupons
from services.campaigns.domain import attribution, webhooks
from services.campaigns.domain.assignment import validate_splits
from services.campaigns.domain.audiences import Audience, AudienceKind, validate_audience
from services.campaigns.domain.coupons import validate as validate_coupon
from services.campaigns.domain.coupons import validate_offer
from services.campaigns.domain.lifecycle import InvalidTransition, editable, transition
from services.campaigns.enrolment import coupon_offer, variants_of
from services.campaigns.runtime import CampaignsService
from services.campaigns.schemas import (
    AssignmentPage,
    AssignmentPublic,
    AudienceIn,
    CampaignCreate,
    CampaignPage,
    CampaignPublic,
    CampaignUpdate,
    CouponAnswer,
    CouponCheck,
    OfferIn,
    ReportPublic,
    SpendIn,
    SpendList,
    SpendPublic,
    TouchPage,
    TouchPublic,
    VariantIn,
    campaign_public,
    cents_public,
    moment_public,
    report_public,
)

# The fields only a draft's can change (SPEC.md "Campaigns": an active campaign's audience, variants and offer can't).
_DRAFT_ONLY = frozenset({"audience", "offer", "variants", "holdout_bp", "window_days", "per_touch_cost"})
_OFFER_TERMS = ("percent_off", "amount_off", "min_spend", "expires_in_days", "per_person_limit")


def _invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_request", detail)


# --- Requests as stored campaigns ------------------------------------------------------------------------------

def _audience_json(audience: AudienceIn) -> dict[str, Any]:
    send_at = None if audience.send_at is None else parse_timestamp(audience.send_at, "audience.send_at")
    try:
        validate_audience(Audience(AudienceKind(audience.kind), audience.segment_id, send_at, audience.hours))
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    return {"kind": audience.kind, "segment_id": audience.segment_id,
            "send_at": None if send_at is None else format_timestamp(send_at), "hours": audience.hours}


def _send_us(audience: dict[str, Any]) -> int | None:
    return None if audience["send_at"] is None else epoch_micros(parse_timestamp(audience["send_at"], "send_at"))


def _offer_json(offer: OfferIn) -> dict[str, Any]:
    fields = {name: getattr(offer, name) for name in _OFFER_TERMS}
    if offer.kind == "message":
        given = sorted(name for name, value in fields.items() if value is not None)
        if given:
            raise _invalid(f"offer.{given[0]}: a message offer carries no coupon terms")
        return {"kind": "message"}
    stored = {"kind": "coupon", **{name: (str(value) if isinstance(value, Decimal) else value)
                                   for name, value in fields.items()}}
    stored["per_person_limit"] = offer.per_person_limit or 1
    terms = coupon_offer(stored)
    assert terms is not None
    try:
        validate_offer(terms)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    return stored


def _variants_json(variants: list[VariantIn], holdout_bp: int) -> list[dict[str, Any]]:
    stored = [{"name": v.name, "split_bp": v.split_bp, "message": v.message} for v in variants]
    record_variants = variants_of(replace(_BLANK, variants=stored))
    try:
        validate_splits(holdout_bp, record_variants)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    return stored


def _check_url(service: CampaignsService, url: str) -> None:
    # Syntax, scheme and a literal address now; a name's addresses where each connection resolves it (DNS can
    # change: delivery.CheckedResolver).
    local = service.settings.common.env in ("local", "test")
    reason = webhooks.url_allowed(url, None, local)
    if reason:
        raise _invalid(f"webhook_url: {reason}")


def _times(start_at: str | None, end_at: str | None) -> tuple[int | None, int | None]:
    start = None if start_at is None else epoch_micros(parse_timestamp(start_at, "start_at"))
    end = None if end_at is None else epoch_micros(parse_timestamp(end_at, "end_at"))
    if start is not None and end is not None and end <= start:
        raise _invalid("end_at: must be after start_at")
    return start, end


_BLANK = CampaignRecord(
    campaign_id="", name="", status="draft", audience={"kind": "segment_entered"}, offer={"kind": "message"},
    variants=[], holdout_bp=0, window_days=7, per_touch_cost_cents=0, budget_cents=None, webhook_url="",
    webhook_secret="", webhook_disabled=None, start_us=None, end_us=None, send_us=None, scheduled_sent=False,
    paused_reason=None, created_us=0, activated_us=None, completed_us=None,
)


async def _campaign(connection: AsyncConnection, campaign_id: str, *, lock: bool = False) -> CampaignRecord:
    record = await load_campaign(connection, campaign_id, lock=lock)
    if record is None:
        raise ApiError(404, "not_found", f"campaign {campaign_id!r} does not exist")
    return record


# --- Campaigns -------------------------------------------------------------------------------------------------

async def create_campaign(service: CampaignsService, body: CampaignCreate) -> CampaignPublic:
    """A new draft; its webhook secret is in this answer only."""
    audience = _audience_json(body.audience)
    start_us, end_us = _times(body.start_at, body.end_at)
    _check_url(service, body.webhook_url)
    record = replace(
        _BLANK, campaign_id="cmp_" + uuid.uuid4().hex, name=body.name, audience=audience,
        offer=_offer_json(body.offer), variants=_variants_json(body.variants, body.holdout_bp),
        holdout_bp=body.holdout_bp, window_days=body.window_days, per_touch_cost_cents=cents(body.per_touch_cost) or 0,
        budget_cents=cents(body.budget), webhook_url=body.webhook_url, webhook_secret=webhooks.new_secret(),
        start_us=start_us, end_us=end_us, created_us=epoch_micros(service.clock()), send_us=_send_us(audience),
    )
    async with service.database.begin() as connection:
        await insert_campaign(connection, record)
    return campaign_public(record, secret=True)


async def campaign_page(service: CampaignsService, after: tuple[Any, ...] | None, limit: int,
                        status: str | None) -> CampaignPage:
    """Campaigns newest first."""
    async with service.database.read() as connection:
        records = await list_campaigns(connection, after=after, limit=limit + 1, status=status)  # type: ignore[arg-type]
    records, next_cursor = page_of(records, limit, lambda r: (r.created_us, r.campaign_id))
    return CampaignPage(items=[campaign_public(r) for r in records], next_cursor=next_cursor)


async def one_campaign(service: CampaignsService, campaign_id: str) -> CampaignPublic:
    async with service.database.read() as connection:
        return campaign_public(await _campaign(connection, campaign_id))


async def change_campaign(service: CampaignsService, campaign_id: str, body: CampaignUpdate) -> CampaignPublic:
    """The fields ``body`` sets; audience, offer, variants, holdout, window and cost only while a draft (409)."""
    given = body.model_fields_set
    async with service.database.begin() as connection:
        record = await _campaign(connection, campaign_id, lock=True)
        draft_only = given & _DRAFT_ONLY
        if draft_only and not editable(record.status):
            raise ApiError(409, "not_editable",
                           f"{', '.join(sorted(draft_only))}: only a draft's can be changed; this one is {record.status}")
        changes: dict[str, Any] = {}
        if body.name is not None:
            changes["name"] = body.name
        if body.audience is not None:
            changes["audience"] = _audience_json(body.audience)
            changes["send_us"] = _send_us(changes["audience"])
        if body.offer is not None:
            changes["offer"] = _offer_json(body.offer)
        holdout = body.holdout_bp if body.holdout_bp is not None else record.holdout_bp
        if body.variants is not None or body.holdout_bp is not None:
            variants = body.variants if body.variants is not None else [VariantIn(**v) for v in record.variants]
            changes["variants"] = _variants_json(variants, holdout)
            changes["holdout_bp"] = holdout
        if body.window_days is not None:
            changes["window_days"] = body.window_days
        if body.per_touch_cost is not None:
            changes["per_touch_cost_cents"] = cents(body.per_touch_cost)
        if "budget" in given:
            changes["budget_cents"] = cents(body.budget)
        if body.webhook_url is not None:
            _check_url(service, body.webhook_url)
            changes["webhook_url"] = body.webhook_url
            changes["webhook_disabled"] = None  # a new endpoint gets a new chance
        if "start_at" in given or "end_at" in given:
            start, end = _times(body.start_at if "start_at" in given else moment_public(record.start_us),
                                body.end_at if "end_at" in given else moment_public(record.end_us))
            changes["start_us"], changes["end_us"] = start, end
        record = replace(record, **changes)
        await save_campaign(connection, record)
    return campaign_public(record)


async def act(service: CampaignsService, campaign_id: str, action: str) -> CampaignPublic:
    """A lifecycle action (activate, pause, complete); an action the status does not allow is 409."""
    now_us = epoch_micros(service.clock())
    async with service.database.begin() as connection:
        record = await _campaign(connection, campaign_id, lock=True)
        try:
            status = transition(record.status, action)
        except InvalidTransition as exc:
            raise ApiError(409, "invalid_transition", str(exc)) from None
        changes: dict[str, Any] = {"status": status.value, "paused_reason": None}
        if action == "activate" and record.activated_us is None:
            changes["activated_us"] = now_us
        if action == "pause":
            changes["paused_reason"] = "call"
        if status.value == "completed":
            changes["completed_us"] = now_us
        record = replace(record, **changes)
        await save_campaign(connection, record)
    service.scheduler.wake()
    return campaign_public(record)


async def rotate_secret(service: CampaignsService, campaign_id: str) -> CampaignPublic:
    """A new webhook secret, in this answer only."""
    async with service.database.begin() as connection:
        record = await _campaign(connection, campaign_id, lock=True)
        record = replace(record, webhook_secret=webhooks.new_secret())
        await save_campaign(connection, record)
    return campaign_public(record, secret=True)


# --- What became of a campaign ---------------------------------------------------------------------------------

def domain_campaign(record: CampaignRecord) -> attribution.Campaign:
    """What the domain's report needs of a stored campaign."""
    return attribution.Campaign(
        campaign_id=record.campaign_id, holdout_bp=record.holdout_bp, variants=tuple(variants_of(record)),
        window_days=record.window_days, per_touch_cost=Decimal(record.per_touch_cost_cents).scaleb(-2),
        budget=None if record.budget_cents is None else Decimal(record.budget_cents).scaleb(-2),
    )


async def campaign_report(service: CampaignsService, campaign_id: str, moment: datetime) -> ReportPublic:
    """Per-arm figures by intent to treat as of ``moment``, and each variant against the control."""
    async with service.database.read() as connection:
        if connection.dialect.name == "postgresql":
            # One snapshot for the report's several statements (READ COMMITTED would let an order counted between
            # them show as a redemption but not a conversion); SQLite's read transaction is one snapshot already.
            connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        record = await _campaign(connection, campaign_id)
        totals = await arm_totals_as_of(connection, campaign_id, epoch_micros(moment))
    return report_public(attribution.report_from_totals(domain_campaign(record), totals, moment))


async def assignment_page(service: CampaignsService, campaign_id: str, after: tuple[Any, ...] | None,
                          limit: int) -> AssignmentPage:
    """Who entered, in which arm, when, and their touch's status, by (assigned_at, person_key)."""
    async with service.database.read() as connection:
        await _campaign(connection, campaign_id)
        rows = await assignment_rows(connection, campaign_id, after=after, limit=limit + 1)  # type: ignore[arg-type]
    rows, next_cursor = page_of(rows, limit, lambda r: (r.assigned_us, r.person_key))
    return AssignmentPage(
        items=[AssignmentPublic(person_key=r.person_key, variant=r.variant, assigned_at=moment_public(r.assigned_us),
                                touch_status=r.status) for r in rows],
        next_cursor=next_cursor,
    )


async def touch_page(service: CampaignsService, campaign_id: str, after: str | None, limit: int,
                     status: str | None) -> TouchPage:
    """The campaign's touches by touch_id."""
    async with service.database.read() as connection:
        await _campaign(connection, campaign_id)
        rows = await touch_rows(connection, campaign_id, after=after, limit=limit + 1, status=status)
    rows, next_cursor = page_of(rows, limit, lambda r: (r.touch_id,))
    return TouchPage(
        items=[TouchPublic(touch_id=r.touch_id, campaign_id=r.campaign_id, variant=r.variant,
                           person_key=r.person_key, coupon_code=r.coupon_code, status=r.status,
                           created_at=moment_public(r.created_us), delivered_at=moment_public(r.delivered_us),
                           attempts=r.attempts, last_error=r.last_error) for r in rows],
        next_cursor=next_cursor,
    )


# --- Checkout and spend ----------------------------------------------------------------------------------------

async def check_coupon(service: CampaignsService, body: CouponCheck) -> CouponAnswer:
    """Whether the code is valid for this person and cart total now, and how much it takes off."""
    now = service.clock()
    async with service.database.read() as connection:
        row = (await connection.execute(select(coupons).where(coupons.c.code == body.code))).first()
        record = None if row is None else await load_campaign(connection, row.campaign_id)
        uses = 0 if row is None else await coupon_uses(connection, row.code, row.person_key)
    answer = validate_coupon(
        code_known=row is not None, code_person=None if row is None else row.person_key, person_key=body.person_key,
        total=body.total, now=now,
        expires_at=None if row is None or row.expires_us is None else from_epoch_micros(row.expires_us),
        offer=None if record is None else coupon_offer(record.offer), uses=uses,
        campaign_status=None if record is None else record.status,
    )
    return CouponAnswer(valid=answer.valid, reason=answer.reason, discount=money(answer.discount))


async def record_spend(service: CampaignsService, body: SpendIn) -> SpendPublic:
    """The spend of (source, day), replacing what was sent before."""
    async with service.database.begin() as connection:
        await set_spend(connection, body.source, body.day, cents(body.amount), epoch_micros(service.clock()))
    return SpendPublic(source=body.source, day=body.day.isoformat(), amount=money(body.amount))


async def spend_page(service: CampaignsService, start: datetime, end: datetime, after: tuple[Any, ...] | None,
                     limit: int) -> SpendList:
    """Spend per (source, day) for the days starting in [start, end), by day then source, with the range's total."""
    first, last = days_starting_in(start, end, service.settings.common.zone)
    async with service.database.read() as connection:
        rows = await spend_rows(connection, first, last, after=after, limit=limit + 1)  # type: ignore[arg-type]
        total_cents = await spend_total_cents(connection, first, last)
    rows, next_cursor = page_of(rows, limit, lambda r: (r.day, r.source))
    return SpendList(items=[SpendPublic(source=source, day=day, amount=cents_public(amount_cents))
                            for source, day, amount_cents in rows],
                     total=cents_public(total_cents), next_cursor=next_cursor)
