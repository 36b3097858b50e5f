"""The segmentation routes' contract: rule validation, names, listing, pagination, 404s, auth, as_of."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.integration.segmentation.conftest import CAMPAIGNS, READ, event
from tests.support import eventually

DORMANT_GOLD = {"all": [{"field": "lifecycle", "op": "eq", "value": "dormant"},
                        {"field": "tier", "op": "in", "value": ["gold", "diamond"]}]}


async def test_rules_are_validated_names_are_unique_and_segments_are_listed(segmentation):
    client = segmentation.client
    invalid = {
        "unknown field": ({"field": "favourite_colour", "op": "eq", "value": "red"},
                          "rule.field: unknown field 'favourite_colour'"),
        "unknown operator": ({"field": "orders", "op": "like", "value": 1}, "rule.op: unknown operator 'like'"),
        "code as text": ("orders > 3", "rule: expected an object"),
        "wrong value kind": ({"all": [{"field": "lifecycle", "op": "eq", "value": "asleep"}]},
                             "rule.all[0].value: expected one of prospect"),
        "bad window": ({"count": {"type": "view", "days": 0}, "op": "gte", "value": 1},
                       "rule.count.days: expected an integer from 1 to 365"),
    }
    for name, (rule, reason) in invalid.items():
        response = await client.post("/v1/segments", json={"name": name, "rule": rule}, headers=CAMPAIGNS)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["code"] == "invalid_rule"
        assert response.json()["detail"].startswith(reason), (name, response.json())
    # A body FastAPI cannot validate has the same error shape as every other error, with the place named.
    shapeless = await client.post("/v1/segments", json={"rule": DORMANT_GOLD}, headers=CAMPAIGNS)
    assert shapeless.status_code == 422
    assert shapeless.json() == {"code": "invalid_request", "detail": "body.name: Field required"}

    assert (await client.post("/v1/segments", json={"name": "x", "rule": DORMANT_GOLD})).status_code == 401
    assert (await client.post("/v1/segments", json={"name": "x", "rule": DORMANT_GOLD},
                              headers=READ)).status_code == 403
    created = await client.post("/v1/segments", json={"name": "沉睡的金卡会员", "rule": DORMANT_GOLD},
                                headers=CAMPAIGNS)
    assert created.status_code == 201, created.text
    segment = created.json()
    assert segment["name"] == "沉睡的金卡会员" and segment["rule"] == DORMANT_GOLD and segment["kind"] == "rule"
    again = await client.post("/v1/segments", json={"name": "沉睡的金卡会员", "rule": DORMANT_GOLD},
                              headers=CAMPAIGNS)
    assert again.status_code == 409
    builtin = await client.post("/v1/segments", json={"name": "lifecycle:dormant", "rule": DORMANT_GOLD},
                                headers=CAMPAIGNS)
    assert builtin.status_code == 409

    listed, cursor = [], None
    while True:
        page = await segmentation.get("/v1/segments", limit=7, **({"cursor": cursor} if cursor else {}))
        listed += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [item["segment_id"] for item in listed]
    assert ids[:5] == ["lifecycle:prospect", "lifecycle:new", "lifecycle:active", "lifecycle:dormant",
                       "lifecycle:churned"]
    assert len(ids) == 5 + 10 + 3 + 1 and ids[-1] == segment["segment_id"]
    assert listed[-1]["rule"] == DORMANT_GOLD
    assert (await client.get("/v1/segments", params={"cursor": "bm9wZQ=="}, headers=READ)).status_code == 400


async def test_unknown_things_answer_404_and_as_of_is_validated(segmentation):
    client = segmentation.client
    await segmentation.send([event("view", f"u-{i}", datetime(2025, 12, 1, tzinfo=UTC), f"e-{i}")
                             for i in range(5)])
    await segmentation.wait_processed(5)
    assert (await client.get("/v1/customers/nobody", headers=READ)).status_code == 404
    # Before a person's first event they are not a customer yet.
    early = await client.get("/v1/customers/u-1", params={"as_of": "2025-11-30T00:00:00Z"}, headers=READ)
    assert early.status_code == 404
    assert (await client.get("/v1/segments/seg-nope/members", headers=READ)).status_code == 404
    assert (await client.get("/v1/customers/u-1")).status_code == 401

    bad = await client.get("/v1/lifecycle", params={"as_of": "yesterday"}, headers=READ)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_parameter" and bad.json()["detail"].startswith("as_of: ")
    # An unencoded "+" in a query string arrives as a space; the offset is still understood.
    plus = await client.get("/v1/lifecycle?as_of=2025-12-01T08:00:00+08:00", headers=READ)
    assert plus.json()["as_of"] == "2025-12-01T00:00:00.000000Z" and plus.json()["stages"]["prospect"] == 5

    async def pages(**params: str) -> list[list[str]]:
        found, cursor = [], None
        while True:
            page = await segmentation.get("/v1/segments/lifecycle:prospect/members", limit=2, **params,
                                          **({"cursor": cursor} if cursor else {}))
            found.append([item["person_key"] for item in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    walk = [["u-0", "u-1"], ["u-2", "u-3"], ["u-4"]]
    # Evaluated at an as_of, and as published once the scheduler has evaluated the new persons.
    assert await pages(as_of="2025-12-02T00:00:00Z") == walk

    async def published() -> bool:
        return await pages() == walk
    await eventually(published, what="the new prospects published")
