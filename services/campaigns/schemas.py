"""Request and answer shapes of the campaigns API (SPEC.md "API surface: campaigns"), and the stored record and
domain report -> answer conversions: extra fields are refused in requests and allowed in answers. Money is a JSON
number rounded to 2 decimals (half up); ratios are unrounded numbers, or null when the denominator is zero."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.events import Amount, Identifier, format_timestamp, from_epoch_micros
from libs.common.http import Money, Ratio, money, response_model
from services.campaigns.adapters.campaigns import CampaignRecord
from services.campaigns.domain import attribution

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


# What a campaign answers as stored; its money and times follow as the answer renders them (campaign_public).
_CampaignAsStored = response_model("_CampaignAsStored", CampaignRecord, module=__name__, only={
    "campaign_id", "name", "status", "audience", "offer", "variants", "holdout_bp", "window_days"})


class CampaignPublic(_CampaignAsStored):
    per_touch_cost: Money
    budget: Money | None
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
    discount: Money


class SpendIn(_Request):
    source: Identifier
    day: date
    amount: Amount


class SpendPublic(BaseModel):
    source: str
    day: str
    amount: Money


class SpendList(BaseModel):
    items: list[SpendPublic]
    total: Money = Field(description="of every entry in the range, not only this page's")
    next_cursor: str | None


class ArmFiguresPublic(BaseModel):
    """One arm's figures by intent to treat (SPEC.md "Attribution")."""

    assigned: int
    touched: int = Field(description="touches delivered by as_of")
    conversions: int = Field(description="persons with at least one counted order in their window")
    conversion_rate: Ratio
    revenue: Money = Field(description="counted orders' totals, gross of refunds")
    revenue_per_assigned: Money | None
    refunds: Money
    redemptions: int
    discount_cost: Money
    cost: Money = Field(description="discount_cost + per-touch cost x touched")
    roi: Ratio = Field(description="(revenue - cost) / cost")


Interval = Annotated[list[float], Field(min_length=2, max_length=2, description="[lo, hi]")]


class RevenueTestPublic(BaseModel):
    """Revenue per assigned person, variant minus control: Welch's t-test."""

    diff: float | None
    p_value: float | None
    ci95: Interval | None
    df: float | None = Field(description="Welch-Satterthwaite degrees of freedom")


class ComparisonPublic(BaseModel):
    """A variant against the control (differences are variant minus control)."""

    lift_abs: Ratio
    lift_rel: Ratio
    p_value: Ratio = Field(description="pooled two-proportion z-test, two-sided")
    ci95: Interval | None = Field(description="Wald interval of the conversion rate difference")
    prob_to_beat: float
    revenue_per_assigned: RevenueTestPublic
    incremental_revenue: Money | None
    incremental_roi: Ratio
    insufficient_data: bool = Field(description="fewer than 50 assigned or 5 conversions in either arm")


class ReportPublic(BaseModel):
    campaign_id: str
    as_of: str
    control: str = Field(description="the holdout when the campaign has one, else the first variant")
    variants: dict[str, ArmFiguresPublic] = Field(description="per arm name, the holdout included")
    comparisons: dict[str, ComparisonPublic] = Field(description="per arm name other than the control")
    srm: bool = Field(description="sample ratio mismatch: srm_p_value < 0.001")
    srm_p_value: Ratio
    srm_chi2: float | None


# --- Stored records and domain reports as answers -----------------------------------------------------------

def moment_public(us: int | None) -> str | None:
    """A stored time (epoch micros) as the RFC 3339 text of an answer."""
    return None if us is None else format_timestamp(from_epoch_micros(us))


def cents_public(amount_cents: int | None) -> float | None:
    """Stored cents as money in an answer."""
    return None if amount_cents is None else money(Decimal(amount_cents).scaleb(-2))


def campaign_public(campaign: CampaignRecord, *, secret: bool = False) -> CampaignPublic:
    """The campaign as answered; ``secret``: with its webhook secret (at creation and rotation only)."""
    offer = dict(campaign.offer)
    for name in ("percent_off", "amount_off", "min_spend"):
        if offer.get(name) is not None:
            offer[name] = float(Decimal(offer[name])) if name == "percent_off" else money(offer[name])
    return CampaignPublic(
        campaign_id=campaign.campaign_id, name=campaign.name, status=campaign.status,
        audience=campaign.audience, offer=offer, variants=campaign.variants,
        holdout_bp=campaign.holdout_bp, window_days=campaign.window_days,
        per_touch_cost=cents_public(campaign.per_touch_cost_cents), budget=cents_public(campaign.budget_cents),
        webhook_url=campaign.webhook_url, webhook_disabled=campaign.webhook_disabled,
        start_at=moment_public(campaign.start_us), end_at=moment_public(campaign.end_us),
        created_at=moment_public(campaign.created_us), activated_at=moment_public(campaign.activated_us),
        completed_at=moment_public(campaign.completed_us), paused_reason=campaign.paused_reason,
        webhook_secret=campaign.webhook_secret if secret else None,
    )


def _interval(ci95: tuple[float, float] | None) -> list[float] | None:
    return None if ci95 is None else list(ci95)


def _figures_public(figures: attribution.ArmFigures) -> ArmFiguresPublic:
    return ArmFiguresPublic(
        assigned=figures.assigned, touched=figures.touched, conversions=figures.conversions,
        conversion_rate=figures.conversion_rate, revenue=money(figures.revenue),
        revenue_per_assigned=money(figures.revenue_per_assigned), refunds=money(figures.refunds),
        redemptions=figures.redemptions, discount_cost=money(figures.discount_cost), cost=money(figures.cost),
        roi=figures.roi,
    )


def _comparison_public(comparison: attribution.Comparison) -> ComparisonPublic:
    welch = comparison.revenue_per_assigned
    return ComparisonPublic(
        lift_abs=comparison.lift_abs, lift_rel=comparison.lift_rel, p_value=comparison.p_value,
        ci95=_interval(comparison.ci95), prob_to_beat=comparison.prob_to_beat,
        revenue_per_assigned=RevenueTestPublic(diff=welch.diff, p_value=welch.p_value, ci95=_interval(welch.ci95),
                                               df=welch.df),
        incremental_revenue=money(comparison.incremental_revenue), incremental_roi=comparison.incremental_roi,
        insufficient_data=comparison.insufficient_data,
    )


def report_public(report: attribution.CampaignReport) -> ReportPublic:
    return ReportPublic(
        campaign_id=report.campaign_id, as_of=format_timestamp(report.as_of), control=report.control,
        variants={name: _figures_public(figures) for name, figures in report.variants.items()},
        comparisons={name: _comparison_public(c) for name, c in report.comparisons.items()},
        srm=report.srm, srm_p_value=report.srm_p_value, srm_chi2=report.srm_chi2,
    )
