"""Request and response shapes of the funnel routes, and the domain -> JSON conversions.

Money is a JSON number rounded to 2 decimals (half up); ratios are unrounded numbers, or null when the
denominator is zero (SPEC.md "API surface").
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from libs.common.events import format_timestamp
from libs.common.http import money, response_model
from services.funnel.adapters.funnels import StoredFunnel
from services.funnel.domain.channels import ChannelMetrics
from services.funnel.domain.funnels import DEFAULT_WINDOW_SECONDS, FunnelResult
from services.funnel.domain.kpis import Kpis
from services.funnel.domain.products import MatrixEntry, ProductMetrics

MAX_WINDOW_SECONDS = 366 * 24 * 3600
MAX_STEPS = 10

FilterValue = Annotated[str, Field(min_length=1, max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepFilter(_Strict):
    product_id: FilterValue | None = Field(default=None, description="the event's product, or any order item")
    category: FilterValue | None = Field(
        default=None, description="latest category of the event's product or of any order item"
    )
    source: FilterValue | None = Field(default=None, description='channel source; "(direct)" when absent')


class FunnelStepCreate(_Strict):
    type: Literal["view", "add_to_cart", "inquiry", "order", "review"]
    where: StepFilter | None = None


class FunnelCreate(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    steps: Annotated[list[FunnelStepCreate], Field(min_length=1, max_length=MAX_STEPS)]
    window_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_WINDOW_SECONDS)] = DEFAULT_WINDOW_SECONDS
    unit: Literal["person", "product"] = "person"


class FunnelStepPublic(BaseModel):
    type: str
    where: dict[str, str]


class FunnelPublic(BaseModel):
    funnel_id: str
    name: str
    steps: list[FunnelStepPublic]
    window_seconds: int
    unit: str
    built_in: bool
    created_at: str | None


class FunnelPage(BaseModel):
    items: list[FunnelPublic]
    next_cursor: str | None


# The figures' fields are the domain dataclasses' (services/funnel/domain/), typed as rendered by ``_figures``.
KpiFigures = response_model("KpiFigures", Kpis, module=__name__)


class DayKpis(KpiFigures):
    date: date


class _Span(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    as_of: str


class KpisPublic(KpiFigures, _Span):
    granularity: Literal["range", "day"]
    time_zone: str
    days: list[DayKpis] | None = Field(default=None, description="granularity=day only")


FunnelFigures = response_model("FunnelFigures", FunnelResult, module=__name__, leave_out={"breakdown"})


class FunnelResultPublic(FunnelFigures, _Span):
    funnel_id: str
    name: str
    unit: str
    window_seconds: int
    breakdown_by: Literal["source", "category"] | None
    breakdown: dict[str, FunnelFigures] | None


ProductPublic = response_model("ProductPublic", ProductMetrics, module=__name__)


class ProductPage(_Span):
    items: list[ProductPublic]
    next_cursor: str | None


MatrixEntryPublic = response_model(
    "MatrixEntryPublic", MatrixEntry, module=__name__, leave_out={"lifecycle"},
    tier_mismatch=(bool, Field(description="a declared tier that differs from the suggested one")), lifecycle=(str, ...),
)


class MatrixPage(BaseModel):
    as_of: str
    items: list[MatrixEntryPublic]
    next_cursor: str | None


# Spend is the campaigns service's: the gateway joins it and adds roas and cac.
_CAMPAIGNS_FIGURES = frozenset({"spend", "roas", "cac"})
ChannelPublic = response_model("ChannelPublic", ChannelMetrics, module=__name__, leave_out=_CAMPAIGNS_FIGURES)


class ChannelsPublic(_Span):
    items: list[ChannelPublic]


_MONEY_FIELDS = frozenset(
    {"gmv", "refunds", "net_gmv", "aov", "revenue_per_buyer", "uv_value", "converted_value", "price"}
)


def _figures(figures: Any, *, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A domain dataclass as JSON-ready fields: money rounded, tuples as lists."""
    public: dict[str, Any] = {}
    for field in dataclasses.fields(figures):
        if field.name in leave_out:
            continue
        value = getattr(figures, field.name)
        if field.name in _MONEY_FIELDS:
            value = money(value)
        elif isinstance(value, tuple):
            value = list(value)
        public[field.name] = value
    return public


def span_public(start: datetime, end: datetime, as_of: datetime) -> dict[str, str]:
    return {"from": format_timestamp(start), "to": format_timestamp(end), "as_of": format_timestamp(as_of)}


def kpis_public(kpis: Kpis) -> dict[str, Any]:
    return _figures(kpis)


def day_public(day: date, kpis: Kpis) -> dict[str, Any]:
    return {"date": day.isoformat(), **_figures(kpis)}


def funnel_public(funnel: StoredFunnel) -> dict[str, Any]:
    definition = funnel.definition
    return {
        "funnel_id": funnel.funnel_id,
        "name": definition.name,
        "steps": [
            {
                "type": step.type,
                "where": {name: value for name in ("product_id", "category", "source")
                          if (value := getattr(step, name)) is not None},
            }
            for step in definition.steps
        ],
        "window_seconds": definition.window_seconds,
        "unit": definition.unit,
        "built_in": funnel.built_in,
        "created_at": None if funnel.created_at is None else format_timestamp(funnel.created_at),
    }


def funnel_result_public(result: FunnelResult) -> dict[str, Any]:
    public = _figures(result, leave_out=frozenset({"breakdown"}))
    public["breakdown"] = (
        None if result.breakdown is None else {value: _figures(part, leave_out=frozenset({"breakdown"}))
                                               for value, part in result.breakdown.items()}
    )
    return public


def product_public(metrics: ProductMetrics) -> dict[str, Any]:
    return _figures(metrics)


def matrix_entry_public(entry: MatrixEntry) -> dict[str, Any]:
    public = _figures(entry)
    public["tier_mismatch"] = entry.declared_tier is not None and entry.declared_tier != entry.suggested_tier
    return public


def channel_public(metrics: ChannelMetrics) -> dict[str, Any]:
    return _figures(metrics, leave_out=_CAMPAIGNS_FIGURES)
