"""Rule segments are bounded (rule depth and nodes, `in` list length, number of segments: settings), can be
deleted (their members exit; built-ins cannot be), and are evaluated off the event loop."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from services.segmentation import population
from services.segmentation.settings import MembershipSettings, RuleSegmentSettings, SegmentationSettings
from tests.integration.segmentation.conftest import CAMPAIGNS, READ, changes, event, order, segment_changes
from tests.support import eventually

T = datetime(2025, 12, 1, tzinfo=UTC)
HAS_ORDERS = {"field": "orders", "op": "gte", "value": 1}


@pytest.fixture
def settings(fast_common_settings, database_url) -> SegmentationSettings:
    return SegmentationSettings(
        database_url=database_url, common=fast_common_settings,
        membership=MembershipSettings(evaluation_interval_seconds=0.3),
        rule_segments=RuleSegmentSettings(max_segments=2, max_rule_depth=3, max_rule_nodes=5, max_in_values=3),
    )


def nested_nots(levels: int) -> dict:
    rule: dict = HAS_ORDERS
    for _ in range(levels):
        rule = {"not": rule}
    return rule


@pytest.mark.parametrize(("rule", "reason"), [
    (nested_nots(3), "rule.not.not.not: nested deeper than 3 levels"),
    ({"any": [HAS_ORDERS] * 5}, "rule: more than 5 nodes"),
    ({"field": "tier", "op": "in", "value": ["silver", "gold", "diamond", "silver"]},
     "rule.value: in takes at most 3 values"),
    ({"field": "acquisition_source", "op": "not_in", "value": ["a", "b", "c", "d"]},
     "rule.value: not_in takes at most 3 values"),
])
async def test_a_rule_over_a_cap_is_422_naming_the_cap(segmentation, rule, reason):
    response = await segmentation.client.post("/v1/segments", json={"name": "big", "rule": rule}, headers=CAMPAIGNS)
    assert response.status_code == 422
    assert response.json() == {"code": "invalid_rule", "detail": reason}


async def test_rules_at_the_caps_are_accepted(segmentation):
    at_caps = {"all": [nested_nots(1), {"field": "tier", "op": "in", "value": ["silver", "gold", "diamond"]}]}
    response = await segmentation.client.post("/v1/segments", json={"name": "ok", "rule": at_caps}, headers=CAMPAIGNS)
    assert response.status_code == 201, response.text


async def test_segments_past_the_cap_are_409_until_one_is_deleted(segmentation):
    client = segmentation.client
    ids = []
    for name in ("one", "two"):
        created = await client.post("/v1/segments", json={"name": name, "rule": HAS_ORDERS}, headers=CAMPAIGNS)
        assert created.status_code == 201
        ids.append(created.json()["segment_id"])
    third = await client.post("/v1/segments", json={"name": "three", "rule": HAS_ORDERS}, headers=CAMPAIGNS)
    assert third.status_code == 409
    assert third.json()["code"] == "too_many_segments"
    assert (await client.delete(f"/v1/segments/{ids[0]}", headers=CAMPAIGNS)).status_code == 204
    again = await client.post("/v1/segments", json={"name": "three", "rule": HAS_ORDERS}, headers=CAMPAIGNS)
    assert again.status_code == 201


async def test_deleting_a_rule_segment_exits_its_members_and_unlists_it(segmentation, broker):
    client = segmentation.client
    segmentation.clock.now = datetime(2025, 12, 2, tzinfo=UTC)
    await segmentation.send([order("u-buyer", T, "e-1", "o-1"), event("view", "u-viewer", T, "e-2")])
    await segmentation.wait_processed(2)
    created = (await client.post("/v1/segments", json={"name": "buyers", "rule": HAS_ORDERS},
                                 headers=CAMPAIGNS)).json()
    segment_id = created["segment_id"]

    entered = await eventually(lambda: _changes_of(broker, segment_id, 1), what="the buyer to enter")
    assert entered == [("u-buyer", "entered", segment_id)]

    assert (await client.delete(f"/v1/segments/{segment_id}", headers=READ)).status_code == 403
    assert (await client.delete(f"/v1/segments/{segment_id}", headers=CAMPAIGNS)).status_code == 204
    both = await eventually(lambda: _changes_of(broker, segment_id, 2), what="the buyer to exit")
    assert both == [("u-buyer", "entered", segment_id), ("u-buyer", "exited", segment_id)]
    # The exit names the segment, deleted before its record was rendered.
    records = [record for record in await segment_changes(broker, 100, deadline_seconds=0.5)
               if record["segment_id"] == segment_id]
    assert [(record["segment_name"], record["segment_kind"]) for record in records] == [("buyers", "rule")] * 2

    listed = (await client.get("/v1/segments", headers=READ)).json()["items"]
    assert segment_id not in [item["segment_id"] for item in listed]
    assert (await client.get(f"/v1/segments/{segment_id}/members", headers=READ)).status_code == 404
    profile = (await client.get("/v1/customers/u-buyer", headers=READ)).json()
    assert segment_id not in [segment["segment_id"] for segment in profile["segments"]]
    assert (await client.delete(f"/v1/segments/{segment_id}", headers=CAMPAIGNS)).status_code == 404


async def _changes_of(broker, segment_id: str, count: int) -> list | None:
    found = [change for change in changes(await segment_changes(broker, 100, deadline_seconds=0.5))
             if change[2] == segment_id]
    return found if len(found) >= count else None


@pytest.mark.parametrize("segment_id", ["lifecycle:dormant", "rfm:champion", "tier:gold"])
async def test_built_in_segments_cannot_be_deleted(segmentation, segment_id):
    response = await segmentation.client.delete(f"/v1/segments/{segment_id}", headers=CAMPAIGNS)
    assert (response.status_code, response.json()["code"]) == (409, "built_in")


async def test_the_service_answers_while_a_rule_is_being_evaluated(segmentation, monkeypatch):
    """A rule evaluation held up inside `matches` must not hold up the event loop: /healthz answers meanwhile.
    (Were it on the loop, nothing below could run until the evaluation gave up waiting.)"""
    client = segmentation.client
    await segmentation.send([order("u-buyer", T, "e-1", "o-1")])
    await segmentation.wait_processed(1)
    created = (await client.post("/v1/segments", json={"name": "buyers", "rule": HAS_ORDERS},
                                 headers=CAMPAIGNS)).json()
    inside, release = threading.Event(), threading.Event()
    gave_up = []
    real_matches = population.matches

    def held_matches(*args, **kwargs):
        inside.set()
        if not release.wait(timeout=15):
            gave_up.append(threading.current_thread().name)
        return real_matches(*args, **kwargs)

    monkeypatch.setattr(population, "matches", held_matches)
    members = asyncio.create_task(client.get(f"/v1/segments/{created['segment_id']}/members", headers=READ))
    await eventually(inside.is_set, what="a rule evaluation to start")
    assert (await client.get("/healthz")).status_code == 200
    release.set()
    assert (await members).status_code == 200
    assert gave_up == []
