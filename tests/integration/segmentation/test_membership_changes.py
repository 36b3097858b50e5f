"""Segment enter/exit records on shoploop.segments.v1: one per change, and time alone moves customers
between stages (the scheduler re-evaluates with the service's clock; SPEC.md "API surface")."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.integration.segmentation.conftest import (
    CAMPAIGNS,
    changes,
    event,
    order,
    rounds_of_everyone,
    segment_changes,
)
from tests.support import eventually


async def scheduler_rounds(segmentation, rounds: int) -> None:
    service = segmentation.service
    target = rounds_of_everyone(service) + rounds
    await eventually(lambda: rounds_of_everyone(service) >= target, what=f"{rounds} more full evaluations")


async def test_each_change_is_published_once_and_time_alone_makes_a_customer_dormant(segmentation, broker, clock):
    clock.now = datetime(2026, 1, 1, tzinfo=UTC)
    created = await segmentation.client.post(
        "/v1/segments", json={"name": "big spenders", "rule": {"field": "gmv", "op": "gte", "value": 1000}},
        headers=CAMPAIGNS,
    )
    big = created.json()["segment_id"]
    await segmentation.send([
        order("u-1", datetime(2025, 12, 20, tzinfo=UTC), "e-1", "o-1", "1500.00"),
        event("view", "u-2", datetime(2025, 12, 30, tzinfo=UTC), "e-2"),
    ])
    first = {("u-1", "entered", "lifecycle:new"), ("u-1", "entered", "rfm:hibernating"),
             ("u-1", "entered", "tier:silver"), ("u-1", "entered", big), ("u-2", "entered", "lifecycle:prospect")}
    assert set(changes(await segment_changes(broker, len(first)))) == first

    await scheduler_rounds(segmentation, 2)  # re-evaluating an unchanged world publishes nothing
    records = await segment_changes(broker, len(first) + 1, deadline_seconds=1)
    assert len(records) == len(first)
    assert all(record["key"] == record["person_key"] for record in records)
    assert len({record["change_id"] for record in records}) == len(records)

    # 116 days after the only order, with no new event: new -> dormant.
    clock.now = datetime(2026, 4, 15, tzinfo=UTC)
    records = await segment_changes(broker, len(first) + 2)
    assert [c for c in changes(records) if c not in first] == [
        ("u-1", "exited", "lifecycle:new"), ("u-1", "entered", "lifecycle:dormant"),
    ]
    dormant = next(r for r in records if r["segment_id"] == "lifecycle:dormant")
    assert dormant["as_of"] == "2026-04-15T00:00:00.000000Z"
    assert dormant["segment_kind"] == "lifecycle"

    await scheduler_rounds(segmentation, 2)
    assert len(await segment_changes(broker, len(first) + 3, deadline_seconds=1)) == len(first) + 2
    members = await segmentation.get("/v1/segments/lifecycle:dormant/members")
    assert members["items"] == [{"person_key": "u-1"}]
