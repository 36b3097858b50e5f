"""The population counts kept in memory and moved (population_state.py) stay equal to the domain and to a count by
the database, while events arrive late and out of order, orders change which event counts, persons are erased and
the as_of moves back and forth (SPEC.md "Customers": RFM, lifecycle, tiers; erasure). On SQLite and PostgreSQL.

The service is started once per database; every example adds persons and moves the counts kept from the examples
before (to newer facts through the change log, to the new as_of through the persons who can have moved)."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import format_timestamp
from libs.common.privacy import ErasureRequest, publish_erasure
from services.segmentation.adapters.fact_changes import changes_since, log_snapshot
from services.segmentation.population_state import count_population
from tests.integration.segmentation.conftest import READ
from tests.integration.segmentation.test_figures_match_domain import BASE, Expected, build_events, histories
from tests.support import eventually

_examples = itertools.count()
# Around the end of the histories' 420 days: seconds and hours either way (moved), now and then further (counted).
steps = st.one_of(st.integers(-90, 90).map(lambda s: timedelta(seconds=s)),
                  st.integers(-3, 3).map(lambda h: timedelta(hours=h, microseconds=1)),
                  st.sampled_from([timedelta(days=1), timedelta(days=-30)]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(history=histories, late=histories, step=steps, erase=st.booleans(), seed=st.integers(0, 2**16))
async def test_kept_counts_equal_the_domain_and_a_count_by_the_database(segmentation, history, late, step, erase,
                                                                        seed):
    state = segmentation.__dict__.setdefault("population_state", {"events": {}, "erased": set(),
                                                                   "as_of": BASE + timedelta(days=400)})
    example = next(_examples)
    events = build_events(example, history)
    # Events of the same persons (and order ids) arriving after the counts were kept: late and out of order.
    later = [e.model_copy(update={"event_id": f"late-{e.event_id}"}) for e in build_events(example, late)]
    random.Random(seed).shuffle(events)
    await segmentation.send(events)
    state["events"].update({e.event_id: e for e in events})
    await segmentation.wait_processed(len(state["events"]))
    await segmentation.service.population.at(state["as_of"])  # kept: what the next answers move from

    await segmentation.send(later)
    state["events"].update({e.event_id: e for e in later})
    await segmentation.wait_processed(len(state["events"]))
    if erase and events:
        person = events[0].person_key
        await publish_erasure(segmentation.service.publisher, ErasureRequest.new(person, BASE))
        state["erased"].add(person)

        async def erased() -> bool:
            answer = await segmentation.client.get(f"/v1/customers/{person}", headers=READ)
            return answer.status_code == 404
        await eventually(erased, what="erased")

    as_of = state["as_of"] = state["as_of"] + step
    expected = Expected([e for e in state["events"].values() if e.person_key not in state["erased"]], as_of, "-")
    at = format_timestamp(as_of)
    kept = await segmentation.service.population.at(as_of)
    async with segmentation.service.database.read(snapshot=True) as connection:
        _, cursor = await changes_since(connection, None, await log_snapshot(connection))
        counted = await count_population(connection, segmentation.service.thresholds.at(as_of), cursor)
    assert (kept.rfm_pairs, list(kept.monetary), kept.standings) == (
        counted.rfm_pairs, list(counted.monetary), counted.standings)
    assert await segmentation.get("/v1/rfm", as_of=at) == expected.rfm_summary()
    lifecycle = await segmentation.get("/v1/lifecycle", as_of=at)
    assert (lifecycle["customers"], lifecycle["stages"]) == (len(expected.figures), expected.lifecycle_counts())
    tiers = await segmentation.get("/v1/tiers", as_of=at)
    assert (tiers["tiers"], tiers["no_tier"]) == expected.tier_counts()
    for person in sorted({e.person_key for e in events} - state["erased"]):
        if person in expected.by_person:
            answer = await segmentation.get(f"/v1/customers/{person}", as_of=at)
            assert answer["rfm"] == expected.profile(person)["rfm"], person

