"""Routes of the campaigns service (SPEC.md "API surface: campaigns")."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import and_, literal, select, tuple_

from libs.common.auth import requires
from libs.common.db import cents, insert, wide_sum, wide_total
from libs.common.events import epoch_micros, format_timestamp, from_epoch_micros
from libs.common.http import (
    ApiError,
    days_starting_in,
    decode_cursor,
    money,
    page_of,
    parse_as_of,
    parse_span,
    parse_timestamp,
)
from services.campaigns.adapters.campaigns import (
    CampaignRecord,
    insert_campaign,
    list_campaigns,
    load_campaign,
    save_campaign,
)
from services.campaigns.adapters.orders import coupon_uses
from services.campaigns.adapters.report_state import arm_totals_as_of
from services.campaigns.adapters.tables import assignments, coupons, spend, touches
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
    AudienceIn,
    CampaignCreate,
    CampaignPage,
    CampaignPublic,
    CampaignUpdate,
    CouponAnswer,
    CouponCheck,
    OfferIn,
    SpendIn,
    SpendList,
    TouchPage,
    VariantIn,
)

# Every route's scope in one place (SPEC.md "API surface": writes `campaigns`, reads `read`, coupon validation
# `ingest` or `campaigns`, the storefront's key), so a change to how keys are checked adapts here.
WRITE_SCOPE = "campaigns"
READ_SCOPE = "read"
VALIDATE_SCOPES = ("ingest", "campaigns")


router = APIRouter(tags=["campaigns"])
WriteKey = Annotated[str, requires(WRITE_SCOPE)]
ReadKey = Annotated[str, requires(READ_SCOPE)]
ValidateKey = Annotated[str, requires(*VALIDATE_SCOPES)]


async def _body_read(request: Request) -> None:
    # The actions take no body (anything sent is ignored); reading it lets the guard refuse a streamed one past
    # the small limit below instead of leaving it unread on the connection.
    await request.body()


# The lifecycle actions and the secret rotation: a write key, and no body to speak of.
ActionKey = Annotated[str, requires(WRITE_SCOPE, max_body_bytes=1024)]
NO_BODY = [Depends(_body_read)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=2048)]
AsOf = Annotated[str | None, Query(max_length=64, description="RFC 3339 timestamp (default: now); encode + as %2B")]


def _service(request: Request) -> CampaignsService:
    return request.app.state.service


def _invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_request", detail)


def _moment(us: int | None) -> str | None:
    return None if us is None else format_timestamp(from_epoch_micros(us))


def _audience_json(audience: AudienceIn) -> dict[str, Any]:
    send_at = None if audience.send_at is None else parse_timestamp(audience.send_at, "audience.send_at")
    try:
        validate_audience(Audience(AudienceKind(audience.kind), audience.segment_id, send_at, audience.hours))
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    return {"kind": audience.kind, "segment_id": audience.segment_id,
            "send_at": None if send_at is None else format_timestamp(send_at), "hours": audience.hours}


def _offer_json(offer: OfferIn) -> dict[str, Any]:
    fields = {name: getattr(offer, name) for name in ("percent_off", "amount_off", "min_spend", "expires_in_days",
                                                        "per_person_limit")}
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


def _check_url(request: Request, url: str) -> None:
    # Syntax, scheme and a literal address now; a name's addresses where each connection resolves it (DNS can
    # change: delivery.CheckedResolver).
    local = _service(request).settings.common.env in ("local", "test")
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


def _public(campaign: CampaignRecord, *, secret: bool = False) -> dict[str, Any]:
    offer = dict(campaign.offer)
    for name in ("percent_off", "amount_off", "min_spend"):
        if offer.get(name) is not None:
            offer[name] = float(Decimal(offer[name])) if name == "percent_off" else money(offer[name])
    return {
        "campaign_id": campaign.campaign_id, "name": campaign.name, "status": campaign.status,
        "audience": campaign.audience, "offer": offer, "variants": campaign.variants,
        "holdout_bp": campaign.holdout_bp, "window_days": campaign.window_days,
        "per_touch_cost": money(Decimal(campaign.per_touch_cost_cents).scaleb(-2)),
        "budget": None if campaign.budget_cents is None else money(Decimal(campaign.budget_cents).scaleb(-2)),
        "webhook_url": campaign.webhook_url, "webhook_disabled": campaign.webhook_disabled,
        "start_at": _moment(campaign.start_us), "end_at": _moment(campaign.end_us),
        "created_at": _moment(campaign.created_us), "activated_at": _moment(campaign.activated_us),
        "completed_at": _moment(campaign.completed_us), "paused_reason": campaign.paused_reason,
        **({"webhook_secret": campaign.webhook_secret} if secret else {}),
    }


async def _campaign(request: Request, campaign_id: str, *, lock: bool = False, connection: Any = None
                    ) -> CampaignRecord:
    record = await load_campaign(connection, campaign_id, lock=lock)
    if record is None:
        raise ApiError(404, "not_found", f"campaign {campaign_id!r} does not exist")
    return record


@router.post("/v1/campaigns", status_code=201, response_model=CampaignPublic,
             summary="Create a draft campaign; its webhook_secret is shown this once")
async def create_campaign(request: Request, body: CampaignCreate, _key: WriteKey) -> dict[str, Any]:
    service = _service(request)
    audience = _audience_json(body.audience)
    start_us, end_us = _times(body.start_at, body.end_at)
    _check_url(request, body.webhook_url)
    now_us = epoch_micros(service.clock())
    record = replace(
        _BLANK, campaign_id="cmp_" + uuid.uuid4().hex, name=body.name, audience=audience,
        offer=_offer_json(body.offer), variants=_variants_json(body.variants, body.holdout_bp),
        holdout_bp=body.holdout_bp, window_days=body.window_days, per_touch_cost_cents=cents(body.per_touch_cost) or 0,
        budget_cents=cents(body.budget), webhook_url=body.webhook_url, webhook_secret=webhooks.new_secret(),
        start_us=start_us, end_us=end_us, created_us=now_us,
        send_us=None if audience["send_at"] is None else epoch_micros(parse_timestamp(audience["send_at"], "send_at")),
    )
    async with service.database.begin() as connection:
        await insert_campaign(connection, record)
    return _public(record, secret=True)


@router.get("/v1/campaigns", response_model=CampaignPage, summary="Campaigns, newest first")
async def get_campaigns(request: Request, _key: ReadKey, limit: Limit = 100, cursor: Cursor = None,
                        status: Annotated[str | None, Query(pattern="^(draft|active|paused|completed)$")] = None,
                        ) -> dict[str, Any]:
    after = decode_cursor(cursor, 2)
    async with _service(request).database.read() as connection:
        records = await list_campaigns(connection, after=after, limit=limit + 1, status=status)  # type: ignore[arg-type]
    records, next_cursor = page_of(records, limit, lambda r: (r.created_us, r.campaign_id))
    return {"items": [_public(r) for r in records], "next_cursor": next_cursor}


@router.get("/v1/campaigns/{campaign_id}", response_model=CampaignPublic, summary="One campaign")
async def get_campaign(request: Request, campaign_id: str, _key: ReadKey) -> dict[str, Any]:
    async with _service(request).database.read() as connection:
        return _public(await _campaign(request, campaign_id, connection=connection))


@router.patch("/v1/campaigns/{campaign_id}", response_model=CampaignPublic,
              summary="Change a campaign (audience, offer, variants, holdout, window and cost only while a draft)")
async def patch_campaign(request: Request, campaign_id: str, body: CampaignUpdate, _key: WriteKey) -> dict[str, Any]:
    service = _service(request)
    given = body.model_fields_set
    async with service.database.begin() as connection:
        record = await _campaign(request, campaign_id, lock=True, connection=connection)
        draft_only = given & {"audience", "offer", "variants", "holdout_bp", "window_days", "per_touch_cost"}
        if draft_only and not editable(record.status):
            raise ApiError(409, "not_editable",
                           f"{', '.join(sorted(draft_only))}: only a draft's can be changed; this one is {record.status}")
        changes: dict[str, Any] = {}
        if body.name is not None:
            changes["name"] = body.name
        if body.audience is not None:
            audience = _audience_json(body.audience)
            changes["audience"] = audience
            changes["send_us"] = None if audience["send_at"] is None else epoch_micros(
                parse_timestamp(audience["send_at"], "send_at"))
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
            _check_url(request, body.webhook_url)
            changes["webhook_url"] = body.webhook_url
            changes["webhook_disabled"] = None  # a new endpoint gets a new chance
        if "start_at" in given or "end_at" in given:
            start, end = _times(body.start_at if "start_at" in given else _moment(record.start_us),
                                body.end_at if "end_at" in given else _moment(record.end_us))
            changes["start_us"], changes["end_us"] = start, end
        record = replace(record, **changes)
        await save_campaign(connection, record)
    return _public(record)


async def _act(request: Request, campaign_id: str, action: str) -> dict[str, Any]:
    service = _service(request)
    now_us = epoch_micros(service.clock())
    async with service.database.begin() as connection:
        record = await _campaign(request, campaign_id, lock=True, connection=connection)
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
    return _public(record)


@router.post("/v1/campaigns/{campaign_id}/activate", response_model=CampaignPublic, dependencies=NO_BODY,
             summary="Activate a draft, or resume a paused campaign")
async def activate(request: Request, campaign_id: str, _key: ActionKey) -> dict[str, Any]:
    return await _act(request, campaign_id, "activate")


@router.post("/v1/campaigns/{campaign_id}/pause", response_model=CampaignPublic, dependencies=NO_BODY, summary="Pause: assigns nobody")
async def pause(request: Request, campaign_id: str, _key: ActionKey) -> dict[str, Any]:
    return await _act(request, campaign_id, "pause")


@router.post("/v1/campaigns/{campaign_id}/complete", response_model=CampaignPublic, dependencies=NO_BODY, summary="Complete (final)")
async def complete(request: Request, campaign_id: str, _key: ActionKey) -> dict[str, Any]:
    return await _act(request, campaign_id, "complete")


@router.post("/v1/campaigns/{campaign_id}/rotate-secret", response_model=CampaignPublic, dependencies=NO_BODY,
             summary="A new webhook secret, shown this once; later attempts are signed with it")
async def rotate_secret(request: Request, campaign_id: str, _key: ActionKey) -> dict[str, Any]:
    service = _service(request)
    async with service.database.begin() as connection:
        record = await _campaign(request, campaign_id, lock=True, connection=connection)
        record = replace(record, webhook_secret=webhooks.new_secret())
        await save_campaign(connection, record)
    return _public(record, secret=True)


def _figures(figures: attribution.ArmFigures) -> dict[str, Any]:
    return {
        "assigned": figures.assigned, "touched": figures.touched, "conversions": figures.conversions,
        "conversion_rate": figures.conversion_rate, "revenue": money(figures.revenue),
        "revenue_per_assigned": money(figures.revenue_per_assigned), "refunds": money(figures.refunds),
        "redemptions": figures.redemptions, "discount_cost": money(figures.discount_cost),
        "cost": money(figures.cost), "roi": figures.roi,
    }


def _comparison(comparison: attribution.Comparison) -> dict[str, Any]:
    welch = comparison.revenue_per_assigned
    return {
        "lift_abs": comparison.lift_abs, "lift_rel": comparison.lift_rel, "p_value": comparison.p_value,
        "ci95": None if comparison.ci95 is None else list(comparison.ci95),
        "prob_to_beat": comparison.prob_to_beat,
        "revenue_per_assigned": {"diff": welch.diff, "p_value": welch.p_value,
                                 "ci95": None if welch.ci95 is None else list(welch.ci95), "df": welch.df},
        "incremental_revenue": money(comparison.incremental_revenue), "incremental_roi": comparison.incremental_roi,
        "insufficient_data": comparison.insufficient_data,
    }


def domain_campaign(record: CampaignRecord) -> attribution.Campaign:
    """What the domain's report needs of a stored campaign."""
    return attribution.Campaign(
        campaign_id=record.campaign_id, holdout_bp=record.holdout_bp, variants=tuple(variants_of(record)),
        window_days=record.window_days, per_touch_cost=Decimal(record.per_touch_cost_cents).scaleb(-2),
        budget=None if record.budget_cents is None else Decimal(record.budget_cents).scaleb(-2),
    )


@router.get("/v1/campaigns/{campaign_id}/report", summary="Per-arm figures by intent to treat, lift over the control")
async def get_report(request: Request, campaign_id: str, _key: ReadKey, as_of: AsOf = None) -> dict[str, Any]:
    service = _service(request)
    moment = parse_as_of(as_of, service.clock())
    async with service.database.read() as connection:
        if connection.dialect.name == "postgresql":
            # One snapshot for the report's several statements (READ COMMITTED would let an order counted between
            # them show as a redemption but not a conversion); SQLite's read transaction is one snapshot already.
            connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        record = await _campaign(request, campaign_id, connection=connection)
        totals = await arm_totals_as_of(connection, campaign_id, epoch_micros(moment))
    report = attribution.report_from_totals(domain_campaign(record), totals, moment)
    return {
        "campaign_id": campaign_id, "as_of": format_timestamp(moment), "control": report.control,
        "variants": {name: _figures(figures) for name, figures in report.variants.items()},
        "comparisons": {name: _comparison(c) for name, c in report.comparisons.items()},
        "srm": report.srm, "srm_p_value": report.srm_p_value, "srm_chi2": report.srm_chi2,
    }


@router.get("/v1/campaigns/{campaign_id}/assignments", response_model=AssignmentPage,
            summary="Who entered, in which arm, when, and what became of their touch")
async def get_assignments(request: Request, campaign_id: str, _key: ReadKey, limit: Limit = 100,
                          cursor: Cursor = None) -> dict[str, Any]:
    after = decode_cursor(cursor, 2)
    a, t = assignments.c, touches.c
    query = (select(a.person_key, a.variant, a.assigned_us, t.status)
             .select_from(assignments.outerjoin(touches, and_(t.campaign_id == a.campaign_id,
                                                              t.person_key == a.person_key)))
             .where(a.campaign_id == campaign_id).order_by(a.assigned_us, a.person_key).limit(limit + 1))
    if after is not None:
        query = query.where((a.assigned_us > after[0]) | ((a.assigned_us == after[0]) & (a.person_key > after[1])))
    async with _service(request).database.read() as connection:
        await _campaign(request, campaign_id, connection=connection)
        rows = list((await connection.execute(query)).all())
    rows, next_cursor = page_of(rows, limit, lambda r: (r.assigned_us, r.person_key))
    return {
        "items": [{"person_key": r.person_key, "variant": r.variant, "assigned_at": _moment(r.assigned_us),
                   "touch_status": r.status} for r in rows],
        "next_cursor": next_cursor,
    }


@router.get("/v1/campaigns/{campaign_id}/touches", response_model=TouchPage, summary="The campaign's touches")
async def get_touches(request: Request, campaign_id: str, _key: ReadKey, limit: Limit = 100, cursor: Cursor = None,
                      status: Annotated[str | None, Query(pattern="^(pending|delivered|failed|suppressed)$")] = None,
                      ) -> dict[str, Any]:
    after = decode_cursor(cursor, 1)
    t = touches.c
    query = select(touches).where(t.campaign_id == campaign_id).order_by(t.touch_id).limit(limit + 1)
    if after is not None:
        query = query.where(t.touch_id > after[0])
    if status is not None:
        query = query.where(t.status == status)
    async with _service(request).database.read() as connection:
        await _campaign(request, campaign_id, connection=connection)
        rows = list((await connection.execute(query)).all())
    rows, next_cursor = page_of(rows, limit, lambda r: (r.touch_id,))
    return {
        "items": [{"touch_id": r.touch_id, "campaign_id": r.campaign_id, "variant": r.variant,
                   "person_key": r.person_key, "coupon_code": r.coupon_code, "status": r.status,
                   "created_at": _moment(r.created_us), "delivered_at": _moment(r.delivered_us),
                   "attempts": r.attempts, "last_error": r.last_error} for r in rows],
        "next_cursor": next_cursor,
    }


@router.post("/v1/coupons/validate", response_model=CouponAnswer,
             summary="At checkout: is this code valid for this person and cart total, and how much off")
async def validate_code(request: Request, body: CouponCheck, _key: ValidateKey) -> dict[str, Any]:
    service = _service(request)
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
    return {"valid": answer.valid, "reason": answer.reason, "discount": money(answer.discount)}


@router.post("/v1/spend", summary="Set the spend of a (source, day); sending it again replaces it")
async def post_spend(request: Request, body: SpendIn, _key: WriteKey) -> dict[str, Any]:
    service = _service(request)
    dialect_rows = {"source": body.source, "day": body.day.isoformat(), "amount_cents": cents(body.amount),
                    "updated_us": epoch_micros(service.clock())}
    async with service.database.begin() as connection:
        statement = insert(connection, spend).values(**dialect_rows)
        statement = statement.on_conflict_do_update(
            index_elements=["source", "day"],
            set_={"amount_cents": statement.excluded.amount_cents, "updated_us": statement.excluded.updated_us})
        await connection.execute(statement)
    return {"source": body.source, "day": body.day.isoformat(), "amount": money(body.amount)}


@router.get("/v1/spend", response_model=SpendList,
            summary="Spend per (source, day) with day in [from, to), by day then source; total over the whole range")
async def get_spend(request: Request, _key: ReadKey, from_: Annotated[str, Query(alias="from", max_length=64)],
                    to: Annotated[str, Query(max_length=64)], limit: Limit = 100,
                    cursor: Cursor = None) -> dict[str, Any]:
    common = _service(request).settings.common
    start, end = parse_span(from_, to, common.zone, common.max_range_days)
    after = decode_cursor(cursor, 2)
    first, last = days_starting_in(start, end, common.zone)
    s = spend.c
    in_range = (s.day >= first.isoformat(), s.day <= last.isoformat())
    page = select(s.source, s.day, s.amount_cents).where(*in_range).order_by(s.day, s.source).limit(limit + 1)
    if after is not None:
        page = page.where(tuple_(s.day, s.source) > tuple_(literal(after[0]), literal(after[1])))
    high, low = wide_sum(s.amount_cents)
    async with _service(request).database.read() as connection:
        rows = list((await connection.execute(page)).all())
        total_cents = wide_total(*(await connection.execute(select(high, low).where(*in_range))).one()) or 0
    rows, next_cursor = page_of(rows, limit, lambda r: (r.day, r.source))
    return {"items": [{"source": source, "day": day, "amount": money(Decimal(amount_cents).scaleb(-2))}
                      for source, day, amount_cents in rows],
            "total": money(Decimal(total_cents).scaleb(-2)), "next_cursor": next_cursor}
