"""Pages of a segment's stored members (adapters/segments.stored_members) on both databases: by the merge of the
person ranges of each membership key holding the segment, and, past _MERGED_KEYS_AT_MOST such keys, by one scan of
the keys; both walk exactly the persons whose key holds the segment, in code-point order."""

from __future__ import annotations

import random

import pytest

from services.segmentation.adapters import segments
from services.segmentation.adapters.segments import stored_members
from services.segmentation.adapters.tables import customer_segments

SEGMENT = "seg_x"
# Ids a substring test could confuse with it (one longer, one with "_" where a LIKE pattern takes any character).
NEIGHBOURS = ("seg_xy", "segax", "rfm:at_risk")


def _rows(key_count: int, rng: random.Random) -> tuple[list[dict[str, str]], list[str]]:
    """Persons under ``key_count`` distinct keys holding SEGMENT, and as many under keys that only look alike."""
    rows, members = [], []
    for n in range(key_count):
        other = f"tag:{n:04d}"
        for holds, ids in ((True, (other, SEGMENT)), (False, (other, rng.choice(NEIGHBOURS)))):
            for m in range(rng.randint(1, 3)):
                person = rng.choice(["", "Z", "a", "é", "中", "_"]) + f"{n}-{m}-{holds}"
                rows.append({"person_key": person, "segment_ids": " ".join(sorted(ids))})
                if holds:
                    members.append(person)
    return rows, sorted(members, key=lambda key: key.encode("utf-32-be"))


async def _walk(database, limit: int) -> list[str]:
    found: list[str] = []
    after = None
    while True:
        async with database.read() as connection:
            page = await stored_members(connection, SEGMENT, after, limit)
        found += page
        if len(page) < limit:
            return found
        after = page[-1]


@pytest.mark.parametrize("key_count", [5, segments._MERGED_KEYS_AT_MOST + 20])
async def test_pages_walk_exactly_the_members_in_code_point_order(database, key_count):
    rows, members = _rows(key_count, random.Random(key_count))
    async with database.begin() as connection:
        await connection.execute(customer_segments.insert(), rows)
    assert await _walk(database, limit=7) == members
