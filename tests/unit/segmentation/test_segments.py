from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from libs.common.events import format_timestamp
from services.segmentation.domain.customers import LifecycleStage, MembershipTier, customer_figures
from services.segmentation.domain.rfm import RfmScore, RfmSegment
from services.segmentation.membership import change_records
from services.segmentation.segments import BUILTIN_BY_ID, BUILTIN_SEGMENTS, SegmentKind, builtin_segment_ids

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def test_every_lifecycle_stage_rfm_segment_and_tier_is_a_builtin_segment_with_a_stable_id():
    ids = [segment.segment_id for segment in BUILTIN_SEGMENTS]

    assert len(ids) == len(set(ids)) == len(LifecycleStage) + len(RfmSegment) + len(MembershipTier)
    assert {"lifecycle:dormant", "rfm:champion", "tier:gold", "lifecycle:prospect"} <= set(ids)
    assert BUILTIN_BY_ID["lifecycle:dormant"].kind is SegmentKind.LIFECYCLE


def test_a_prospect_is_only_in_the_prospect_stage():
    assert builtin_segment_ids(customer_figures([], AS_OF), None) == ["lifecycle:prospect"]


def test_a_scored_customer_with_a_tier_is_in_one_segment_of_each_kind():
    figures = replace(customer_figures([], AS_OF), lifecycle=LifecycleStage.ACTIVE, tier=MembershipTier.GOLD,
                      monetary=Decimal(2500))
    score = RfmScore(5, 5, 4, RfmSegment.CHAMPION)

    assert builtin_segment_ids(figures, score) == ["lifecycle:active", "rfm:champion", "tier:gold"]


def test_a_change_record_names_the_change_segment_and_person_and_carries_a_unique_id():
    segment = BUILTIN_BY_ID["lifecycle:dormant"]

    first = change_records([("entered", segment, "u-1")], AS_OF)[0]
    second = change_records([("entered", segment, "u-1")], AS_OF)[0]

    change_id, person, payload = first
    assert person == "u-1"
    assert orjson.loads(payload) == {
        "change_id": change_id, "change": "entered", "segment_id": "lifecycle:dormant",
        "segment_name": "lifecycle:dormant", "segment_kind": "lifecycle", "person_key": "u-1",
        "as_of": "2026-01-01T00:00:00.000000Z",
    }
    assert second[0] != change_id
    # An evaluation passes its moment formatted once: the same record.
    _, _, preformatted = change_records([("entered", segment, "u-1")], format_timestamp(AS_OF))[0]
    assert orjson.loads(preformatted) | {"change_id": change_id} == orjson.loads(payload)
