"""A round of everyone that looks only at the customers who can have changed since the last round
(domain/rounds.py) leaves exactly the memberships a round looking at every customer leaves, and both equal
the domain functions applied in Python (``builtin_memberships``); the queued records replay to them. Random
histories and random steps of time (forward and back), new and late events in between, on SQLite and
PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import delete, select

from libs.common.db import Database
from libs.common.events import Event
from services.segmentation.adapters.segments import last_round, segment_names
from services.segmentation.adapters.tables import customer_segments, membership_changes, metadata, profiles
from services.segmentation.decoding import decode_event
from services.segmentation.handlers import record_customer_facts
from services.segmentation.membership import change_records, sync_membership
from services.segmentation.population import Thresholds, builtin_memberships
from services.segmentation.segments import membership_ids, membership_key
from services.segmentation.settings import MembershipSettings, SegmentationSettings
from tests.integration.segmentation.conftest import changes, event, order, rounds_of_everyone
from tests.integration.segmentation.conftest import segment_changes as published_changes
from tests.support import eventually

BASE = datetime(2026, 1, 1, tzinfo=UTC)
TOTALS = ["0.00", "19.99", "100.00", "1999.99", "2000.00", "9999.99", "10000.00"]
# Steps of the clock, in hours: around the 30/90/180/365-day boundaries, and backwards.
STEPS = [1, 5, 24, 24 * 7, 24 * 29, 24 * 30, 24 * 31, 24 * 60, 24 * 90, 24 * 185, -24 * 3]
NEVER_COMPLETE = timedelta(days=10_000)
THRESHOLDS = Thresholds()


def _at(rng: random.Random, first_day: int, last_day: int) -> datetime:
    # Whole hours, so that the day boundaries of the rounds are hit exactly.
    return BASE + timedelta(hours=rng.randint(first_day * 24, last_day * 24))


def _history(rng: random.Random, persons: list[str], first_day: int, last_day: int, tag: str) -> list[Event]:
    events: list[Event] = []
    for n, person in enumerate(persons):
        events.append(event("view", person, _at(rng, first_day, last_day), f"{tag}-v-{n}"))
        for j in range(rng.choice([0, 0, 1, 1, 2, 3, 5])):
            # Now and then an order_id another person completed too: it counts at the earlier event.
            order_id = f"o-{rng.randrange(40)}" if rng.random() < 0.1 else f"{tag}-o-{n}-{j}"
            events.append(order(person, _at(rng, first_day, last_day), f"{tag}-o-{n}-{j}", order_id,
                                rng.choice(TOTALS)))
    return events


async def _record(database: Database, events: list[Event]) -> None:
    async with database.begin() as connection:
        await record_customer_facts(connection, [decode_event(e.to_json()) for e in events])


async def _stored(database: Database) -> dict[str, str]:
    async with database.read() as connection:
        return dict((await connection.execute(select(customer_segments))).all())


async def _expected(database: Database, as_of: datetime) -> dict[str, str]:
    async with database.read() as connection:
        standings = await builtin_memberships(connection, as_of, THRESHOLDS)
    return {person: membership_key(ids) for person, ids, _ in standings if ids}


async def _replay_records(database: Database, membership: dict[str, set[str]]) -> None:
    """Apply the queued records to ``membership`` in order, and forget them."""
    async with database.begin() as connection:
        rows = (await connection.execute(select(membership_changes).order_by(membership_changes.c.seq))).all()
        records = change_records(rows, await segment_names(connection))
        await connection.execute(delete(membership_changes))
    for _, payload in records:
        record = orjson.loads(payload)
        ids = membership.setdefault(record["person_key"], set())
        if record["change"] == "entered":
            assert record["segment_id"] not in ids
            ids.add(record["segment_id"])
        else:
            ids.remove(record["segment_id"])


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_round_of_the_changed_few_leaves_what_a_round_of_everyone_would(database, seed):
    rng = random.Random(seed)
    persons = [f"u-{n}" for n in range(60)]
    await _record(database, _history(rng, persons, -500, 40, "a"))
    as_of = BASE
    async with database.begin() as connection:
        await sync_membership(connection, as_of, THRESHOLDS)
    replayed: dict[str, set[str]] = {}
    await _replay_records(database, replayed)
    looked_at_few = 0
    for step in range(14):
        changed: list[str] = []
        if rng.random() < 0.5:
            # New persons and late events of known ones, dated before and after the clock.
            newcomers = [f"u-{seed}-{step}-{n}" for n in range(rng.randint(0, 3))]
            changed = newcomers + rng.sample(persons, 3)
            await _record(database, _history(rng, changed, -400, 60, f"s{step}"))
            if rng.random() < 0.5:
                # The persons with new facts evaluated on their own first, as the scheduler does.
                async with database.begin() as connection:
                    await sync_membership(connection, as_of + timedelta(minutes=1), THRESHOLDS, changed)
        as_of += timedelta(hours=rng.choice(STEPS))
        async with database.begin() as connection:
            evaluated, _ = await sync_membership(connection, as_of, THRESHOLDS, changed=changed, complete=False,
                                                 complete_every=NEVER_COMPLETE)
        expected = await _expected(database, as_of)
        looked_at_few += evaluated < len(expected)
        assert await _stored(database) == expected, f"step {step}, as_of {as_of}"
        await _replay_records(database, replayed)
        assert {person: membership_key(ids) for person, ids in replayed.items() if ids} == expected

        async with database.begin() as connection:
            await sync_membership(connection, as_of, THRESHOLDS)  # looking at everyone changes nothing more
            assert (await connection.execute(select(membership_changes))).first() is None
    assert looked_at_few >= 5  # the test exercised the round of the few, not only its fallbacks


async def test_a_round_looks_at_everyone_once_the_last_complete_round_is_older_than_the_limit(database):
    # Orders long before the rounds: five minutes later no boundary passes anyone, so a round of the few looks
    # at nobody; once the last round that looked at everyone is too old, a round looks at every customer.
    await _record(database, [order(f"u-{n}", BASE - timedelta(days=400 + n), f"e-{n}", f"o-{n}") for n in range(6)])
    async with database.begin() as connection:
        assert (await sync_membership(connection, BASE, THRESHOLDS))[0] == 6

    async def looked_at(minutes: int, complete_every: timedelta) -> int:
        async with database.begin() as connection:
            evaluated, _ = await sync_membership(connection, BASE + timedelta(minutes=minutes), THRESHOLDS,
                                                 complete=False, complete_every=complete_every)
        return evaluated

    assert await looked_at(5, timedelta(hours=1)) == 0
    assert await looked_at(10, timedelta(minutes=7)) == 6  # 10 minutes since the last complete round
    assert await looked_at(15, timedelta(minutes=7)) == 0  # that one was complete: 5 minutes since


async def test_an_erased_profile_makes_the_next_round_look_at_everyone(database):
    await _record(database, [order("u-1", BASE - timedelta(days=3), "e-1", "o-1"),
                             order("u-2", BASE - timedelta(days=2), "e-2", "o-1"),
                             event("view", "u-3", BASE - timedelta(days=1), "e-3")])
    async with database.begin() as connection:
        await sync_membership(connection, BASE, THRESHOLDS)
        assert await last_round(connection) is not None
    async with database.begin() as connection:
        # As an erasure does: u-1's order now counts at u-2's event, which no new event of u-2 announces.
        await connection.execute(delete(profiles).where(profiles.c.person_key == "u-1"))
        await connection.execute(delete(customer_segments).where(customer_segments.c.person_key == "u-1"))
        assert await last_round(connection) is None

    async with database.begin() as connection:
        await connection.execute(metadata.tables["counted_orders"].update().values(person_key="u-2", event_id="e-2"))
        evaluated, queued = await sync_membership(connection, BASE + timedelta(minutes=5), THRESHOLDS,
                                                  complete=False)

    assert (evaluated, queued) == (2, 1)  # u-2 and u-3 looked at; u-2 exits prospect and enters three
    assert membership_ids((await _stored(database))["u-2"]) == {"lifecycle:new", "rfm:hibernating", "tier:silver"}


@pytest.fixture
def settings(fast_common_settings, database_url) -> SegmentationSettings:
    # Persons with new facts are left to the rounds of everyone, which then have to know about them.
    return SegmentationSettings(database_url=database_url, common=fast_common_settings, membership=MembershipSettings(
        evaluation_interval_seconds=0.3, evaluate_after_events=False))


async def test_rounds_of_everyone_pick_up_new_facts_while_the_clock_stands_still(segmentation, broker, clock):
    clock.now = BASE
    # Ten customers more, so that u-1's second order moves no quintile cut: only u-1 can change.
    others = [order(f"u-{n}", BASE - timedelta(days=10), f"e-o{n}", f"o-o{n}") for n in range(2, 12)]
    await segmentation.send([order("u-1", BASE - timedelta(days=2), "e-1", "o-1"), *others])
    first = 3 * 11
    assert ("u-1", "entered", "lifecycle:new") in changes(await published_changes(broker, first))
    rounds = rounds_of_everyone(segmentation.service)
    await eventually(lambda: rounds_of_everyone(segmentation.service) >= rounds + 2, what="two more rounds")

    # Rounds after the first look only at who can have changed: no time passed, so only u-1, with a new order.
    await segmentation.send([order("u-1", BASE - timedelta(days=1), "e-2", "o-2", "2500.00")])
    records = changes(await published_changes(broker, first + 6))
    assert records[first:] == [
        ("u-1", "exited", "lifecycle:new"), ("u-1", "exited", "rfm:new"), ("u-1", "exited", "tier:silver"),
        ("u-1", "entered", "lifecycle:active"), ("u-1", "entered", "rfm:champion"), ("u-1", "entered", "tier:gold"),
    ]
