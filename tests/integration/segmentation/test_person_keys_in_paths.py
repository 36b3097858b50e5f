"""Any person key reaches its profile and its erasure: keys holding "/", "%", spaces, Chinese, or ending in "/"
(the path form takes the rest of the path, URL-decoded; the query form takes anything), and no trailing slash
is redirected to another person."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import orjson

from libs.common.kafka import PRIVACY_TOPIC
from tests.integration.segmentation.conftest import ADMIN, READ, event
from tests.support import read_topic

T = datetime(2025, 12, 1, tzinfo=UTC)
ODD_KEYS = ["u/1", "u-2/", "/u-3", "50%off", "%2F", "with space", "张伟", "a//b", "u-1"]


def path_of(person_key: str) -> str:
    return "/v1/customers/" + quote(person_key, safe="")


async def test_every_odd_key_has_its_own_profile_by_path_and_by_query(segmentation):
    await segmentation.send([event("view", key, T, f"e-{n}") for n, key in enumerate(ODD_KEYS)])
    await segmentation.wait_processed(len(ODD_KEYS))
    client = segmentation.client
    for key in ODD_KEYS:
        by_path = await client.get(path_of(key), headers=READ)
        assert by_path.status_code == 200, (key, by_path.text)
        assert by_path.json()["person_key"] == key
        by_query = await client.get("/v1/customers", params={"person_key": key}, headers=READ)
        assert by_query.status_code == 200, (key, by_query.text)
        assert by_query.json()["person_key"] == key


async def test_a_trailing_slash_names_another_person_and_is_not_redirected(segmentation):
    await segmentation.send([event("view", "u-1", T, "e-1")])
    await segmentation.wait_processed(1)
    response = await segmentation.client.get("/v1/customers/u-1/", headers=READ, follow_redirects=False)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_customer"
    assert "'u-1/'" in response.json()["detail"]


async def test_every_odd_key_can_be_erased_by_path_and_by_query(segmentation, broker):
    client = segmentation.client
    for key in ODD_KEYS:
        response = await client.delete(path_of(key), headers=ADMIN)
        assert response.status_code == 202, (key, response.text)
        assert response.json()["person_key"] == key
    by_query = await client.delete("/v1/customers", params={"person_key": "q/uery 键%"}, headers=ADMIN)
    assert by_query.status_code == 202
    records = await read_topic(broker.bootstrap_servers, PRIVACY_TOPIC, count=len(ODD_KEYS) + 1)
    assert sorted(orjson.loads(record.value)["person_key"] for record in records) == sorted([*ODD_KEYS, "q/uery 键%"])


async def test_an_empty_or_oversized_key_is_422(segmentation):
    client = segmentation.client
    assert (await client.delete("/v1/customers/", headers=ADMIN)).status_code == 422
    assert (await client.delete(path_of("k" * 301), headers=ADMIN)).status_code == 422
    assert (await client.delete("/v1/customers", params={"person_key": ""}, headers=ADMIN)).status_code == 422
