"""The campaigns routes: the auth matrix generated from one route table, bad input answered 4xx naming the field,
the lifecycle's refusals, spend replaced on re-send, secret rotation and cursors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.campaigns.api import READ_SCOPE, VALIDATE_SCOPES, WRITE_SCOPE
from tests.integration.campaigns.conftest import ADMIN, INGEST, READ, WRITE, Campaigns, campaign_body
from tests.support import eventually

KEYS = {"read": READ, "campaigns": WRITE, "ingest": INGEST, "admin": ADMIN}
# method, path, scopes that may call it, body
ROUTES: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("POST", "/v1/campaigns", (WRITE_SCOPE,), "campaign"),
    ("GET", "/v1/campaigns", (READ_SCOPE,), None),
    ("GET", "/v1/campaigns/{id}", (READ_SCOPE,), None),
    ("PATCH", "/v1/campaigns/{id}", (WRITE_SCOPE,), {"name": "renamed"}),
    ("POST", "/v1/campaigns/{id}/rotate-secret", (WRITE_SCOPE,), None),
    ("GET", "/v1/campaigns/{id}/report", (READ_SCOPE,), None),
    ("GET", "/v1/campaigns/{id}/assignments", (READ_SCOPE,), None),
    ("GET", "/v1/campaigns/{id}/touches", (READ_SCOPE,), None),
    ("POST", "/v1/coupons/validate", VALIDATE_SCOPES, {"code": "NOPE", "person_key": "u-1", "total": 10}),
    ("POST", "/v1/spend", (WRITE_SCOPE,), {"source": "douyin", "day": "2026-05-01", "amount": 12.5}),
    ("GET", "/v1/spend?from=2026-05-01&to=2026-05-02", (READ_SCOPE,), None),
    ("POST", "/v1/campaigns/{id}/activate", (WRITE_SCOPE,), None),
    ("POST", "/v1/campaigns/{id}/pause", (WRITE_SCOPE,), None),
    ("POST", "/v1/campaigns/{id}/complete", (WRITE_SCOPE,), None),
]


async def _call(campaigns: Campaigns, method: str, path: str, body: Any, headers: dict[str, str], campaign_id: str):
    if body == "campaign":
        body = campaign_body(campaigns.receiver.url)
    return await campaigns.client.request(method, path.replace("{id}", campaign_id), json=body, headers=headers)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_route_refuses_missing_keys_and_keys_without_its_scope(campaigns: Campaigns):
    campaign_id = (await campaigns.create())["campaign_id"]
    for method, path, scopes, body in ROUTES:
        response = await _call(campaigns, method, path, body, {}, campaign_id)
        assert response.status_code == 401, (method, path, response.text)
        response = await _call(campaigns, method, path, body, {"Authorization": "Bearer not-a-key"}, campaign_id)
        assert response.status_code == 401, (method, path)
        for scope, headers in KEYS.items():
            response = await _call(campaigns, method, path, body, headers, campaign_id)
            allowed = scope in scopes or scope == "admin"
            if allowed:  # past auth; the lifecycle routes may then answer 409 for the campaign's status
                assert response.status_code in (200, 201, 409), (method, path, scope, response.text)
            else:
                assert response.status_code == 403 and response.json()["code"] == "forbidden", (method, path, scope)


BAD_CAMPAIGNS = [
    ({"variants": [{"name": "a", "split_bp": 5000}]}, "sum to 10000"),
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ({"offer": {"kind": "message", "percent_off": 10}}, "offer.percent_off"),
    ({"offer": {"kind": "coupon"}}, "percent_off"),
    ({"audience": {"kind": "cart_abandoned"}}, "audience.hours"),
    ({"audience": {"kind": "segment_scheduled", "segment_id": "rfm:new"}}, "audience.send_at"),
    ({"audience": {"kind": "segment_scheduled", "segment_id": "rfm:new", "send_at": "tomorrow"}}, "send_at"),
    ({"holdout_bp": 10_001}, "holdout_bp"),
    ({"variants": [{"name": "holdout", "split_bp": 8000}]}, "holdout"),
    ({"surprise": 1}, "surprise"),
    ({"per_touch_cost": "0.001"}, "per_touch_cost"),
    ({"window_days": 0}, "window_days"),
    ({"start_at": "2026-05-02T00:00:00Z", "end_at": "2026-05-01T00:00:00Z"}, "end_at"),
    ({"name": "x" * 201}, "name"),
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_bad_campaigns_are_refused_with_422_naming_the_field(campaigns: Campaigns):
    for overrides, field in BAD_CAMPAIGNS:
        body = campaign_body(campaigns.receiver.url) | overrides
        response = await campaigns.client.post("/v1/campaigns", json=body, headers=WRITE)
        assert response.status_code == 422, (overrides, response.text)
        assert field in response.json()["detail"], (overrides, response.json())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_lifecycle_refuses_what_the_status_does_not_allow(campaigns: Campaigns):
    campaign = await campaigns.create()
    campaign_id = campaign["campaign_id"]
    assert "webhook_secret" in campaign and campaign["status"] == "draft"
    shown = await campaigns.get(f"/v1/campaigns/{campaign_id}")
    assert "webhook_secret" not in shown or shown["webhook_secret"] is None  # shown once only
    patched = await campaigns.client.patch(f"/v1/campaigns/{campaign_id}", headers=WRITE,
                                           json={"variants": [{"name": "b", "split_bp": 8000}]})
    assert patched.status_code == 200 and patched.json()["variants"][0]["name"] == "b"
    await campaigns.act(campaign_id, "activate")
    refused = await campaigns.client.patch(f"/v1/campaigns/{campaign_id}", headers=WRITE,
                                           json={"offer": {"kind": "message"}})
    assert refused.status_code == 409 and "offer" in refused.json()["detail"]
    assert (await campaigns.client.patch(f"/v1/campaigns/{campaign_id}", headers=WRITE,
                                         json={"name": "still allowed"})).status_code == 200
    assert (await campaigns.act(campaign_id, "pause"))["status"] == "paused"
    assert (await campaigns.act(campaign_id, "activate"))["status"] == "active"
    assert (await campaigns.act(campaign_id, "complete"))["status"] == "completed"
    again = await campaigns.client.post(f"/v1/campaigns/{campaign_id}/activate", headers=WRITE)
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"
    missing = await campaigns.client.get("/v1/campaigns/cmp_nope", headers=READ)
    assert missing.status_code == 404
    tampered = await campaigns.client.get("/v1/campaigns", params={"cursor": "garbage!"}, headers=READ)
    assert tampered.status_code == 400 and tampered.json()["code"] == "invalid_cursor"
    bad_as_of = await campaigns.client.get(f"/v1/campaigns/{campaign_id}/report", params={"as_of": "soon"},
                                           headers=READ)
    assert bad_as_of.status_code == 422 and "as_of" in bad_as_of.json()["detail"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_spend_is_replaced_on_resend_and_listed_by_day(campaigns: Campaigns):
    for amount in (100, 250.5):
        response = await campaigns.client.post("/v1/spend", headers=WRITE,
                                               json={"source": "douyin", "day": "2026-05-01", "amount": amount})
        assert response.status_code == 200, response.text
    await campaigns.client.post("/v1/spend", headers=WRITE, json={"source": "douyin", "day": "2026-05-02",
                                                                  "amount": 7})
    await campaigns.client.post("/v1/spend", headers=WRITE, json={"source": "baidu", "day": "2026-05-02",
                                                                  "amount": 0.25})
    listed = await campaigns.get("/v1/spend", **{"from": "2026-05-01", "to": "2026-05-02"})
    assert listed == {"items": [{"source": "douyin", "day": "2026-05-01", "amount": 250.5}], "total": 250.5,
                      "next_cursor": None}
    both = await campaigns.get("/v1/spend", **{"from": "2026-05-01", "to": "2026-05-03"})
    assert both["total"] == 257.75
    assert [(item["day"], item["source"]) for item in both["items"]] == [
        ("2026-05-01", "douyin"), ("2026-05-02", "baidu"), ("2026-05-02", "douyin")]
    # Page by page: the same entries in the same order, each page with the whole range's total.
    walked, cursor = [], None
    while True:
        page = await campaigns.get("/v1/spend", **{"from": "2026-05-01", "to": "2026-05-03", "limit": 1},
                                   **({"cursor": cursor} if cursor else {}))
        assert page["total"] == 257.75 and len(page["items"]) <= 1
        walked += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == both["items"]
    forged = await campaigns.client.get("/v1/spend", headers=READ,
                                        params={"from": "2026-05-01", "to": "2026-05-03", "cursor": "not-a-cursor"})
    assert forged.status_code == 400 and forged.json()["code"] == "invalid_cursor", forged.text
    bad = await campaigns.client.post("/v1/spend", headers=WRITE, json={"source": "douyin", "day": "May 1",
                                                                        "amount": 1})
    assert bad.status_code == 422 and "day" in bad.json()["detail"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_rotated_secret_signs_every_later_attempt(campaigns: Campaigns):
    campaign = await campaigns.create(holdout_bp=0, variants=[{"name": "coupon", "split_bp": 10_000}])
    campaign_id = campaign["campaign_id"]
    rotated = await campaigns.client.post(f"/v1/campaigns/{campaign_id}/rotate-secret", headers=WRITE)
    assert rotated.status_code == 200
    new_secret = rotated.json()["webhook_secret"]
    assert new_secret.startswith("whsec_") and new_secret != campaign["webhook_secret"]
    campaigns.receiver.secrets[campaign_id] = new_secret
    await campaigns.act(campaign_id, "activate")
    await campaigns.enter_segment("lifecycle:dormant", ["r-1", "r-2"], campaigns.clock.now + timedelta(seconds=0))
    await eventually(lambda: len(campaigns.receiver.delivered) == 2, deadline_seconds=60, what="both touches delivered")
    assert campaigns.receiver.bad_signatures == []
