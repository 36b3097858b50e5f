from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from libs.common.events import epoch_micros
from services.segmentation.domain.customers import LifecycleStage, MembershipTier, customer_figures
from services.segmentation.domain.rfm import RfmScore, RfmSegment
from services.segmentation.membership import change_records
from services.segmentation.segments import (
    BUILTIN_BY_ID,
    BUILTIN_SEGMENTS,
    SegmentDefinition,
    SegmentKind,
    builtin_segment_ids,
)

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
    row = (7, 0x1234, epoch_micros(AS_OF), "u-1", "", "lifecycle:dormant")

    [(person, payload)] = change_records([row], BUILTIN_BY_ID)

    assert person == b"u-1"
    record = orjson.loads(payload)
    assert record == {
        "change_id": record["change_id"], "change": "entered", "segment_id": "lifecycle:dormant",
        "segment_name": "lifecycle:dormant", "segment_kind": "lifecycle", "person_key": "u-1",
        "as_of": "2026-01-01T00:00:00.000000Z",
    }
    # Rendered again (a re-send after a crash): the same record, the same id.
    assert change_records([row], BUILTIN_BY_ID) == [(person, payload)]
    # Another row (seq) or another evaluation: another id.
    other_rows = [(8, 0x1234, *row[2:]), (7, 0x1235, *row[2:])]
    assert {orjson.loads(payload)["change_id"] for _, payload in change_records(other_rows, BUILTIN_BY_ID)
            } & {record["change_id"]} == set()


def test_a_person_moving_on_exits_before_entering_and_each_record_of_a_row_has_its_own_id():
    rule = SegmentDefinition(segment_id="seg-1", name="Big spenders", kind=SegmentKind.RULE)
    row = (1, 99, epoch_micros(AS_OF), "u-1", "lifecycle:new seg-1 tier:silver", "lifecycle:active tier:silver")

    records = [orjson.loads(payload) for _, payload in change_records([row], BUILTIN_BY_ID | {"seg-1": rule})]

    assert [(r["change"], r["segment_id"], r["segment_name"], r["segment_kind"]) for r in records] == [
        ("exited", "lifecycle:new", "lifecycle:new", "lifecycle"), ("exited", "seg-1", "Big spenders", "rule"),
        ("entered", "lifecycle:active", "lifecycle:active", "lifecycle")]
    assert len({r["change_id"] for r in records}) == 3
    # A segment no longer known (neither stored nor removed) gets no record.
    assert len(change_records([row], BUILTIN_BY_ID)) == 2
