"""Segments: the built-in ones (lifecycle stages, RFM segments, membership tiers) and operators' rule segments."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum, auto
from typing import Any

from services.segmentation.domain.customers import CustomerFigures, LifecycleStage, MembershipTier
from services.segmentation.domain.rfm import RfmScore, RfmSegment
from services.segmentation.domain.rules import Rule


# The kind of a segment; its value is its name in lower case (StrEnum's auto: "rule", "lifecycle", ...).
class SegmentKind(StrEnum):
    RULE = auto()
    LIFECYCLE = auto()
    RFM = auto()
    TIER = auto()


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    segment_id: str
    name: str
    kind: SegmentKind
    rule: Rule | None = None
    created_at: datetime | None = None
    rule_json: Any = None  # the rule as the operator posted it


def _builtin(kind: SegmentKind, value: str) -> SegmentDefinition:
    segment_id = f"{kind}:{value}"
    return SegmentDefinition(segment_id=segment_id, name=segment_id, kind=kind)


# Campaigns target these like rule segments ("entered lifecycle:dormant"); ids never change.
BUILTIN_SEGMENTS: tuple[SegmentDefinition, ...] = (
    *(_builtin(SegmentKind.LIFECYCLE, stage) for stage in LifecycleStage),
    *(_builtin(SegmentKind.RFM, segment) for segment in RfmSegment),
    *(_builtin(SegmentKind.TIER, tier) for tier in MembershipTier),
)
BUILTIN_BY_ID = {segment.segment_id: segment for segment in BUILTIN_SEGMENTS}


_LIFECYCLE_IDS = {stage: f"{SegmentKind.LIFECYCLE}:{stage}" for stage in LifecycleStage}
_RFM_IDS = {segment: f"{SegmentKind.RFM}:{segment}" for segment in RfmSegment}
_TIER_IDS = {tier: f"{SegmentKind.TIER}:{tier}" for tier in MembershipTier}


def builtin_ids(lifecycle: LifecycleStage, rfm_segment: RfmSegment | None, tier: MembershipTier | None) -> list[str]:
    """The built-in segments of a customer in this lifecycle stage, RFM segment (if any) and tier (if any)."""
    ids = [_LIFECYCLE_IDS[lifecycle]]
    if rfm_segment is not None:
        ids.append(_RFM_IDS[rfm_segment])
    if tier is not None:
        ids.append(_TIER_IDS[tier])
    return ids


def builtin_segment_ids(figures: CustomerFigures, rfm: RfmScore | None) -> list[str]:
    """The built-in segments a customer with these figures is in."""
    return builtin_ids(figures.lifecycle, rfm and rfm.segment, figures.tier)


def membership_key(segment_ids: Iterable[str]) -> str:
    """How a person's membership is stored: the segment ids, sorted, joined by spaces (ids have none)."""
    return " ".join(sorted(segment_ids))


def membership_ids(key: str | None) -> set[str]:
    """The segment ids of a stored ``membership_key``."""
    return set(key.split()) if key else set()
