"""Answer shapes of the gateway's own routes (extra fields allowed: each part carries its service's answer)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.funnel.schemas import ChannelPublic


class Part(BaseModel):
    """One service's share of an answer: its figures when ``ok``, else the reason it is missing."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "unavailable"]
    service: str | None = Field(default=None, description="unavailable: the service that failed")
    reason: str | None = Field(default=None, description="unavailable: why")


class KpisPart(Part):
    current: dict[str, Any] | None = Field(default=None, description="the funnel's /v1/kpis over [from, to)")
    previous: dict[str, Any] | None = Field(default=None, description="the same over the previous period")
    change: dict[str, float | None] | None = Field(
        default=None, description="(current - previous) / previous per KPI; null when the previous value is 0")
    days: list[dict[str, Any]] | None = Field(default=None, description="every KPI per day of [from, to)")


class Period(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str


class OverviewPublic(Period):
    as_of: str
    time_zone: str
    previous: Period
    segments_as_of: str
    kpis: KpisPart
    funnel: Part = Field(description="the built-in `default` funnel's result over the range")
    lifecycle: Part
    rfm: Part
    tiers: Part
    campaigns: Part = Field(description="`items`: each campaign with its report at as_of")


class PricedChannelPublic(ChannelPublic):
    model_config = ConfigDict(extra="allow")  # whatever else the funnel says of a source is passed on

    spend: float | None = Field(description="money: spend posted for the source's days in the range")
    roas: float | None = Field(description="gmv / spend")
    cac: float | None = Field(description="money: spend / new_customers")


class ChannelsPublic(Period):
    as_of: str
    items: list[PricedChannelPublic]
    spend: Part = Field(description="whether the campaigns service's spend could be read")


class ServiceHealth(BaseModel):
    model_config = ConfigDict(extra="allow")

    service: str
    url: str | None
    status: Literal["ready", "unready", "unreachable", "not_deployed"]
    version: str | None = None
    checks: dict[str, str] | None = None
    consumers: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="per consumer group: assigned partitions, lag, last_event_occurred_at, last_processed_at, "
                    "dead_lettered")
    reason: str | None = None


class HealthPublic(BaseModel):
    status: Literal["ready", "degraded"]
    gateway: dict[str, str]
    services: list[ServiceHealth]
