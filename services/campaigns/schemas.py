"""Request and answer shapes of the campaigns API (SPEC.md "API surface: campaigns"): extra fields are refused in
requests and allowed in answers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.events import Amount, Identifier

Basis = Annotated[int, Field(ge=0, le=10_000, strict=True)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudienceIn(_Request):
    kind: Literal["segment_entered", "segment_scheduled", "cart_abandoned", "inquiry_unanswered"]
    segment_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    send_at: Annotated[str, Field(max_length=64, description="RFC 3339 timestamp")] | None = None
    hours: Annotated[int, Field(ge=1, le=2160, strict=True)] | None = None


class OfferIn(_Request):
    kind: Literal["coupon", "message"]
    percent_off: Amount | None = Field(default=None, le=100)
    amount_off: Amount | None = None
    min_spend: Amount | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=3650, strict=True)] | None = None
    per_person_limit: Annotated[int, Field(ge=1, le=1000, strict=True)] | None = None


class VariantIn(_Request):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    split_bp: Basis
    message: Annotated[str, Field(max_length=4000)] | None = None


class CampaignCreate(_Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    audience: AudienceIn
    offer: OfferIn
    variants: Annotated[list[VariantIn], Field(min_length=1, max_length=20)]
    holdout_bp: Basis = 0
    window_days: Annotated[int, Field(ge=1, le=365, strict=True)] = 7
    per_touch_cost: Amount = Field(default=Decimal(0))
    budget: Amount | None = None
    webhook_url: Annotated[str, Field(min_length=1, max_length=2048)]
    start_at: Annotated[str, Field(max_length=64)] | None = None
    end_at: Annotated[str, Field(max_length=64)] | None = None


class CampaignUpdate(_Request):
    """Any subset; audience, offer, variants, holdout_bp, window_days and per_touch_cost only while a draft."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    audience: AudienceIn | None = None
    offer: OfferIn | None = None
    variants: Annotated[list[VariantIn], Field(min_length=1, max_length=20)] | None = None
    holdout_bp: Basis | None = None
    window_days: Annotated[int, Field(ge=1, le=365, strict=True)] | None = None
    per_touch_cost: Amount | None = None
    budget: Amount | None = None
    webhook_url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    start_at: Annotated[str, Field(max_length=64)] | None = None
    end_at: Annotated[str, Field(max_length=64)] | None = None


class CampaignPublic(BaseModel):
    campaign_id: str
    name: str
    status: str
    audience: dict[str, Any]
    offer: dict[str, Any]
    variants: list[dict[str, Any]]
    holdout_bp: int
    window_days: int
    per_touch_cost: float
    budget: float | None
    webhook_url: str
    webhook_disabled: str | None = Field(description="why deliveries stopped (the endpoint answered 410), or null")
    start_at: str | None
    end_at: str | None
    created_at: str
    activated_at: str | None
    completed_at: str | None
    paused_reason: str | None
    webhook_secret: str | None = Field(default=None, description="shown once: at creation and on rotation")


class CampaignPage(BaseModel):
    items: list[CampaignPublic]
    next_cursor: str | None


class AssignmentPublic(BaseModel):
    person_key: str
    variant: str
    assigned_at: str
    touch_status: str | None


class AssignmentPage(BaseModel):
    items: list[AssignmentPublic]
    next_cursor: str | None


class TouchPublic(BaseModel):
    touch_id: str
    campaign_id: str
    variant: str
    person_key: str
    coupon_code: str | None
    status: str
    created_at: str
    delivered_at: str | None
    attempts: int
    last_error: str | None


class TouchPage(BaseModel):
    items: list[TouchPublic]
    next_cursor: str | None


class CouponCheck(_Request):
    code: Identifier
    person_key: Annotated[str, Field(min_length=1, max_length=300)]
    total: Amount


class CouponAnswer(BaseModel):
    valid: bool
    reason: str | None
    discount: float


class SpendIn(_Request):
    source: Identifier
    day: date
    amount: Amount


class SpendPublic(BaseModel):
    source: str
    day: str
    amount: float


class SpendList(BaseModel):
    items: list[SpendPublic]
    total: float  # of every entry in the range, not only this page's
    next_cursor: str | None
