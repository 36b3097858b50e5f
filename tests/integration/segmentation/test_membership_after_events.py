"""Membership follows new events within moments, without waiting for the scheduler's next round."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.segmentation.settings import MembershipSettings, SegmentationSettings
from tests.integration.segmentation.conftest import changes, event, order, segment_changes


@pytest.fixture
def settings(fast_common_settings, database_url) -> SegmentationSettings:
    # The scheduler's full round runs at start-up only: what follows comes from the per-event path.
    return SegmentationSettings(
        database_url=database_url, common=fast_common_settings,
        membership=MembershipSettings(evaluation_interval_seconds=300),
    )


async def test_a_persons_new_events_move_them_between_segments_within_seconds(segmentation, broker, clock):
    clock.now = datetime(2026, 4, 15, tzinfo=UTC)
    await segmentation.send([
        order("u-1", datetime(2025, 12, 20, tzinfo=UTC), "e-1", "o-1", "1500.00"),
        event("view", "u-2", datetime(2026, 4, 1, tzinfo=UTC), "e-2"),
    ])
    first = [("u-1", "entered", "lifecycle:dormant"), ("u-1", "entered", "rfm:hibernating"),
             ("u-1", "entered", "tier:silver"), ("u-2", "entered", "lifecycle:prospect")]
    assert sorted(changes(await segment_changes(broker, len(first), deadline_seconds=5))) == sorted(first)

    # u-2 buys: prospect -> new, gold tier; ranked against u-1, R score 3 with F score 1: about_to_sleep.
    await segmentation.send([order("u-2", datetime(2026, 4, 14, tzinfo=UTC), "e-3", "o-2", "2500.00")])
    records = await segment_changes(broker, len(first) + 4, deadline_seconds=5)
    later = [c for c in changes(records) if c not in first]
    assert later[0] == ("u-2", "exited", "lifecycle:prospect")  # the exit comes before the entries
    assert sorted(later[1:]) == [("u-2", "entered", "lifecycle:new"), ("u-2", "entered", "rfm:about_to_sleep"),
                                 ("u-2", "entered", "tier:gold")]
    assert len(await segment_changes(broker, len(first) + 5, deadline_seconds=1)) == len(first) + 4
