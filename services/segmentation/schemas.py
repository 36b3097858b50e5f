"""Request and response models of the segmentation routes (SPEC.md "API surface: segmentation")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from services.segmentation.domain.customers import LifecycleStage, MembershipTier
from services.segmentation.domain.rfm import RfmSegment
from services.segmentation.segments import SegmentKind


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
    as_of: str = Field(description="the moment the members were decided at")
    membership: Literal["published", "evaluated"] = Field(
        description="published: the stored membership as last published on shoploop.segments.v1 (no as_of "
                    "asked; as_of is the last round of everyone); evaluated: computed at the as_of asked")
    items: list[Member]
    next_cursor: str | None


class ErasureAccepted(BaseModel):
    person_key: str
    requested_at: str
    request_id: str
