"""The read side answers from kept state and stays exact: cached RFM cuts follow new facts and erasures, pages of
published members equal the domain's membership at the last round, and every route renders its declared model
(issue 10). Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import format_timestamp
from libs.common.privacy import ErasureRequest, publish_erasure
from services.segmentation.api import router
from services.segmentation.segments import BUILTIN_SEGMENTS
from tests.integration.segmentation.conftest import ADMIN, CAMPAIGNS, READ, event, order
from tests.integration.segmentation.test_figures_match_domain import RULE, Expected, build_events, histories
from tests.support import eventually

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


async def _profile(segmentation, person: str) -> dict[str, Any]:
    return await segmentation.get(f"/v1/customers/{person}", as_of=format_timestamp(AS_OF))


async def test_profiles_at_one_minute_rank_with_the_population_counted_once(segmentation):
    await segmentation.send([order(f"p-{i}", AS_OF - timedelta(days=i), f"e-{i}", f"o-{i}", total=f"{i}00.00")
                             for i in range(1, 6)])
    await segmentation.wait_processed(5)
    registry = segmentation.service.metrics.registry

    def computed() -> float | None:
        return registry.get_sample_value("shoploop_rfm_population_counted_total")

    first = await _profile(segmentation, "p-3")
    assert computed() == 1
    answers = [await _profile(segmentation, f"p-{i}") for i in (3, 3, 1, 5)]
    assert answers[0] == answers[1] == first and answers[3]["rfm"]["m_score"] == 5
    # 30 s later in the same minute: derived from the same count.
    later = await segmentation.get("/v1/customers/p-3", as_of=format_timestamp(AS_OF + timedelta(seconds=30)))
    assert later["rfm"] == first["rfm"]
    assert computed() == 1


async def test_a_cached_ranking_follows_a_new_order_of_someone_else(segmentation):
    await segmentation.send([order(f"p-{i}", AS_OF - timedelta(days=i), f"e-{i}", f"o-{i}", total=f"{i}00.00")
                             for i in range(1, 6)])
    await segmentation.wait_processed(5)
    assert (await _profile(segmentation, "p-5"))["rfm"]["m_score"] == 5  # 4 of 5 strictly smaller
    # Five richer customers arrive (orders before as_of): p-5's monetary is no longer the top fifth.
    await segmentation.send([order(f"q-{i}", AS_OF - timedelta(days=1), f"f-{i}", f"r-{i}", total="9000.00")
                             for i in range(5)])
    await segmentation.wait_processed(10)
    after = (await _profile(segmentation, "p-5"))["rfm"]
    assert after["m_score"] == 3  # 4 of 10 strictly smaller: 1 + floor(5 x 4 / 10)


async def test_a_cached_ranking_follows_an_erasure(segmentation):
    await segmentation.send([order(f"p-{i}", AS_OF - timedelta(days=i), f"e-{i}", f"o-{i}", total=f"{i}00.00")
                             for i in range(1, 6)])
    await segmentation.wait_processed(5)
    assert (await _profile(segmentation, "p-3"))["rfm"]["m_score"] == 3  # 2 of 5 strictly smaller
    await publish_erasure(segmentation.service.publisher, ErasureRequest.new("p-5", AS_OF))
    await publish_erasure(segmentation.service.publisher, ErasureRequest.new("p-4", AS_OF))

    async def erased() -> bool:
        answer = await segmentation.client.get("/v1/customers/p-5", headers=READ)
        return answer.status_code == 404
    await eventually(erased, what="p-5 erased")

    async def reranked() -> bool:
        # Three customers left once p-4 is erased too: 2 of 3 strictly smaller, 1 + floor(10 / 3) = 4.
        return (await _profile(segmentation, "p-3"))["rfm"]["m_score"] == 4
    await eventually(reranked, what="p-3 ranked among the three customers left")


_examples = itertools.count()
# Orders near the day boundaries a grid minute and an as_of within it straddle: whole days before the minute,
# a few seconds either way (rfm_cuts.py moves the population counted at the minute to the as_of).
near_boundaries = st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 1, 2, 30, 90, 180, 364, 365, 366]),
                                     st.sampled_from([-61, -1, 0, 1, 30, 59, 61]),
                                     st.sampled_from(["9.90", "10.00", "99.99", "2000.00"])), min_size=1, max_size=8)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(drawn=near_boundaries, seconds=st.integers(0, 59), micros=st.sampled_from([0, 1, 999_999]),
       first_seen=st.integers(0, 60))
async def test_profiles_and_counts_between_grid_minutes_equal_the_domain(segmentation, drawn, seconds, micros,
                                                                         first_seen):
    events = segmentation.__dict__.setdefault("boundary_events", {})
    example = next(_examples)
    new_events = [order(f"b{example}-p{person}", AS_OF - timedelta(days=days, seconds=back), f"b{example}-e{n}",
                        f"b{example}-o{n}", total=total) for n, (person, days, back, total) in enumerate(drawn)]
    # A person first seen within the minute: known at some as_of of it, not at others.
    new_events.append(event("view", f"b{example}-new", AS_OF + timedelta(seconds=first_seen), f"b{example}-v"))
    await segmentation.send(new_events)
    events.update({e.event_id: e for e in new_events})
    await segmentation.wait_processed(len(events))
    as_of = AS_OF + timedelta(seconds=seconds, microseconds=micros)
    expected = Expected(list(events.values()), as_of, "no-rule")
    for person in sorted({e.person_key for e in new_events}):
        if person in expected.by_person:
            answer = await segmentation.get(f"/v1/customers/{person}", as_of=format_timestamp(as_of))
            assert answer["rfm"] == expected.profile(person)["rfm"], person
    lifecycle = await segmentation.get("/v1/lifecycle", as_of=format_timestamp(as_of))
    assert (lifecycle["customers"], lifecycle["stages"]) == (len(expected.figures), expected.lifecycle_counts())
    tiers = await segmentation.get("/v1/tiers", as_of=format_timestamp(as_of))
    assert (tiers["tiers"], tiers["no_tier"]) == expected.tier_counts()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(history=histories, later=st.integers(0, 30 * 24), shuffle_seed=st.integers(0, 2**16))
async def test_pages_of_published_members_equal_the_domain_at_the_last_round(segmentation, history, later,
                                                                             shuffle_seed):
    state = segmentation.__dict__.setdefault("published_state", {"events": {}, "rule_id": None})
    if state["rule_id"] is None:
        created = await segmentation.client.post("/v1/segments", json={"name": "published", "rule": RULE},
                                                 headers=CAMPAIGNS)
        assert created.status_code == 201, created.text
        state["rule_id"] = created.json()["segment_id"]
    # The clock only moves forward, as a real one: rounds after the first look only at who can have changed.
    clock = segmentation.clock
    clock.now = max(clock.now, datetime(2025, 6, 1, tzinfo=UTC)) + timedelta(hours=later)
    new_events = build_events(next(_examples), history)
    random.Random(shuffle_seed).shuffle(new_events)
    await segmentation.send(new_events)
    state["events"].update({e.event_id: e for e in new_events})
    await segmentation.wait_processed(len(state["events"]))
    await segmentation.wait_reported()
    await segmentation.service.scheduler.run_once(full=True)  # a round of everyone after every fact

    expected = Expected(list(state["events"].values()), clock.now, state["rule_id"])
    members: dict[str, list[str]] = {segment.segment_id: [] for segment in BUILTIN_SEGMENTS}
    members[state["rule_id"]] = []
    for person in sorted(expected.by_person):
        for segment_id in expected.profile(person)["segments"]:
            members[segment_id].append(person)
    for segment_id, persons in members.items():
        walked, cursor = [], None
        while True:
            page = await segmentation.get(f"/v1/segments/{segment_id}/members", limit=3,
                                          **({"cursor": cursor} if cursor else {}))
            assert (page["membership"], page["as_of"]) == ("published", format_timestamp(clock.now))
            walked += [item["person_key"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == persons, segment_id


# A value for each path or required query parameter and a body for each request model of the segmentation
# routes: a route added without one fails the test below. The rule segment the POST creates is the one deleted.
_VALUES = {"person_key": "p-1", "segment_id": "lifecycle:active"}
_BODIES = {"SegmentCreate": {"name": "big spenders", "rule": {"field": "gmv", "op": "gte", "value": 100}}}
_STATUS = {"GET": 200, "POST": 201, "DELETE": 202}


def _rendered(model: Any, body: Any) -> Any:
    """``body`` as the model renders it: equal to ``body`` only when it has every field, of the right type,
    and no other."""
    return model.model_validate(body).model_dump(mode="json")


async def test_every_route_answers_its_declared_response_model(segmentation):
    await segmentation.send([order("p-1", AS_OF - timedelta(days=3), "e-1", "o-1"),
                             event("identify", "p-1", AS_OF - timedelta(days=4), "e-2", traits={"city": "杭州"})])
    await segmentation.wait_processed(2)
    calls = [(method, route) for route in router.routes if isinstance(route, APIRoute) for method in route.methods]
    assert {method for method, _ in calls} == set(_STATUS)
    values = dict(_VALUES)
    # Reads, then writes, then the erasures (which make p-1 unknown).
    for method, route in sorted(calls, key=lambda call: list(_STATUS).index(call[0])):
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda name: values[name[1]], route.path)
        query = {param.name: values[param.name] for param in route.dependant.query_params if param.field_info.is_required()}
        body = None if route.body_field is None else _BODIES[route.body_field.field_info.annotation.__name__]
        headers = ADMIN if method == "DELETE" and "customers" in path else CAMPAIGNS if method != "GET" else READ
        answer = await segmentation.client.request(method, path, params=query, json=body, headers=headers)
        if route.status_code == 204:
            assert (answer.status_code, answer.content, route.response_model) == (204, b"", None), path
            continue
        assert answer.status_code == _STATUS[method], (method, path, answer.text)
        assert route.response_model is not None, route.path
        assert _rendered(route.response_model, answer.json()) == answer.json(), (method, path)
        if method == "POST":
            values["segment_id"] = answer.json()["segment_id"]


async def test_published_and_evaluated_pages_walk_person_keys_in_the_same_code_point_order(segmentation):
    keys = ["B", "a", "_x", "a b", "é", "中文", "Z9", "z-1", "%2F"]
    await segmentation.send([event("view", key, AS_OF - timedelta(days=1), f"e-{n}") for n, key in enumerate(keys)])
    await segmentation.wait_processed(len(keys))
    await segmentation.wait_reported()
    await segmentation.service.scheduler.run_once(full=True)

    async def walk(**params: str) -> list[str]:
        found, cursor = [], None
        while True:
            page = await segmentation.get("/v1/segments/lifecycle:prospect/members", limit=2, **params,
                                          **({"cursor": cursor} if cursor else {}))
            found += [item["person_key"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    assert await walk() == await walk(as_of=format_timestamp(AS_OF)) == sorted(keys)
