"""Routes of the campaigns service (SPEC.md "API surface: campaigns"): each parses its input, calls one function
of operations.py and renders that function's model (schemas.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from libs.common.auth import requires
from libs.common.http import decode_cursor, parse_as_of, parse_span
from services.campaigns import operations, schemas
from services.campaigns.runtime import CampaignsService

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


@router.post("/v1/campaigns", status_code=201, response_model=schemas.CampaignPublic,
             summary="Create a draft campaign; its webhook_secret is shown this once")
async def create_campaign(request: Request, body: schemas.CampaignCreate, _key: WriteKey) -> schemas.CampaignPublic:
    return await operations.create_campaign(_service(request), body)


@router.get("/v1/campaigns", response_model=schemas.CampaignPage, summary="Campaigns, newest first")
async def get_campaigns(request: Request, _key: ReadKey, limit: Limit = 100, cursor: Cursor = None,
                        status: Annotated[str | None, Query(pattern="^(draft|active|paused|completed)$")] = None,
                        ) -> schemas.CampaignPage:
    return await operations.campaign_page(_service(request), decode_cursor(cursor, 2), limit, status)


@router.get("/v1/campaigns/{campaign_id}", response_model=schemas.CampaignPublic, summary="One campaign")
async def get_campaign(request: Request, campaign_id: str, _key: ReadKey) -> schemas.CampaignPublic:
    return await operations.one_campaign(_service(request), campaign_id)


@router.patch("/v1/campaigns/{campaign_id}", response_model=schemas.CampaignPublic,
              summary="Change a campaign (audience, offer, variants, holdout, window and cost only while a draft)")
async def patch_campaign(request: Request, campaign_id: str, body: schemas.CampaignUpdate,
                         _key: WriteKey) -> schemas.CampaignPublic:
    return await operations.change_campaign(_service(request), campaign_id, body)


# The lifecycle actions (SPEC.md "Lifecycle"): POST /v1/campaigns/{campaign_id}/<action>, one route each.
LIFECYCLE_ACTIONS = {
    "activate": "Activate a draft, or resume a paused campaign",
    "pause": "Pause: assigns nobody",
    "complete": "Complete (final)",
}


def _lifecycle_route(action: str, summary: str) -> None:
    async def act(request: Request, campaign_id: str, _key: ActionKey) -> schemas.CampaignPublic:
        return await operations.act(_service(request), campaign_id, action)

    router.post(f"/v1/campaigns/{{campaign_id}}/{action}", response_model=schemas.CampaignPublic,
                dependencies=NO_BODY, summary=summary, name=action)(act)


for _action, _summary in LIFECYCLE_ACTIONS.items():
    _lifecycle_route(_action, _summary)


@router.post("/v1/campaigns/{campaign_id}/rotate-secret", response_model=schemas.CampaignPublic, dependencies=NO_BODY,
             summary="A new webhook secret, shown this once; later attempts are signed with it")
async def rotate_secret(request: Request, campaign_id: str, _key: ActionKey) -> schemas.CampaignPublic:
    return await operations.rotate_secret(_service(request), campaign_id)


@router.get("/v1/campaigns/{campaign_id}/report", response_model=schemas.ReportPublic,
            summary="Per-arm figures by intent to treat, lift over the control")
async def get_report(request: Request, campaign_id: str, _key: ReadKey, as_of: AsOf = None) -> schemas.ReportPublic:
    service = _service(request)
    return await operations.campaign_report(service, campaign_id, parse_as_of(as_of, service.clock()))


@router.get("/v1/campaigns/{campaign_id}/assignments", response_model=schemas.AssignmentPage,
            summary="Who entered, in which arm, when, and what became of their touch")
async def get_assignments(request: Request, campaign_id: str, _key: ReadKey, limit: Limit = 100,
                          cursor: Cursor = None) -> schemas.AssignmentPage:
    return await operations.assignment_page(_service(request), campaign_id, decode_cursor(cursor, 2), limit)


@router.get("/v1/campaigns/{campaign_id}/touches", response_model=schemas.TouchPage, summary="The campaign's touches")
async def get_touches(request: Request, campaign_id: str, _key: ReadKey, limit: Limit = 100, cursor: Cursor = None,
                      status: Annotated[str | None, Query(pattern="^(pending|delivered|failed|suppressed)$")] = None,
                      ) -> schemas.TouchPage:
    after = decode_cursor(cursor, 1)
    after_id = None if after is None else str(after[0])
    return await operations.touch_page(_service(request), campaign_id, after_id, limit, status)


@router.post("/v1/coupons/validate", response_model=schemas.CouponAnswer,
             summary="At checkout: is this code valid for this person and cart total, and how much off")
async def validate_code(request: Request, body: schemas.CouponCheck, _key: ValidateKey) -> schemas.CouponAnswer:
    return await operations.check_coupon(_service(request), body)


@router.post("/v1/spend", response_model=schemas.SpendPublic,
             summary="Set the spend of a (source, day); sending it again replaces it")
async def post_spend(request: Request, body: schemas.SpendIn, _key: WriteKey) -> schemas.SpendPublic:
    return await operations.record_spend(_service(request), body)


@router.get("/v1/spend", response_model=schemas.SpendList,
            summary="Spend per (source, day) with day in [from, to), by day then source; total over the whole range")
async def get_spend(request: Request, _key: ReadKey, from_: Annotated[str, Query(alias="from", max_length=64)],
                    to: Annotated[str, Query(max_length=64)], limit: Limit = 100,
                    cursor: Cursor = None) -> schemas.SpendList:
    service = _service(request)
    common = service.settings.common
    start, end = parse_span(from_, to, common.zone, common.max_range_days)
    return await operations.spend_page(service, start, end, decode_cursor(cursor, 2), limit)
