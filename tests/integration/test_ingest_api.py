"""The ingest contract over real HTTP, a real broker and both databases (SPEC.md "Ingest contract")."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.events import Event
from libs.common.kafka import EVENTS_TOPIC, PRIVACY_TOPIC, REJECTED_TOPIC, Publisher, ensure_topics
from libs.common.privacy import ErasureRequest, publish_erasure
from services.ingest.adapters.rejected import rejected_events
from services.ingest.bootstrap import create_ingest_app
from services.ingest.settings import IngestSettings, Limits, RateLimit
from tests.support import eventually, read_topic, serve_app

INGEST = {"Authorization": "Bearer dev-ingest-key"}
# Rejected events hold raw personal data: listing and replaying them needs the admin scope.
ADMIN = {"Authorization": "Bearer dev-admin-key"}
NOW = datetime.now(UTC).replace(microsecond=0)


def view(person: str, product_id: str = "p-1", **extra) -> dict:
    return {"type": "view", "user_id": person, "occurred_at": (NOW - timedelta(hours=1)).isoformat(),
            "product": {"product_id": product_id}, **extra}


@pytest.fixture
def settings(common_settings, database_url) -> IngestSettings:
    return IngestSettings(
        database_url=database_url, common=common_settings,
        limits=Limits(max_event_bytes=2048, max_request_bytes=64 * 1024, max_events_per_request=50),
        rate_limit=RateLimit(events_per_second=5, burst=60), publish_timeout_seconds=2,
    )


@pytest.fixture
async def ingest(settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(create_ingest_app(settings)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        yield client


async def test_accepted_events_are_on_the_topic_keyed_by_person_with_unicode_intact(ingest, broker):
    name = "真丝连衣裙 👗 «été»"
    events = [view("u-1") | {"product": {"product_id": "p-1", "name": name}},
              view("u-2"), {**view("ignored"), "user_id": None, "anonymous_id": "a-9"}]
    response = await ingest.post("/v1/events", json={"events": events}, headers=INGEST)
    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "rejected": [], "ignored": []}
    records = await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=3)
    by_key = {record.key: record for record in records}
    assert set(by_key) == {b"u-1", b"u-2", b"anon:a-9"}
    assert name.encode() in by_key[b"u-1"].value  # byte-exact UTF-8, not \u escapes
    assert Event.from_json(by_key[b"u-1"].value).product.name == name
    # one person's events share a partition
    response = await ingest.post("/v1/events", json=view("u-1", product_id="p-2"), headers=INGEST)
    assert response.json()["accepted"] == 1
    records = await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=4)
    assert len({r.partition for r in records if r.key == b"u-1"}) == 1


INVALID_EVENTS = [
        ({"type": "view", "occurred_at": NOW.isoformat(), "product": {"product_id": "p"}},
         "one of user_id or anonymous_id is required"),
        ({"type": "click", "user_id": "u", "occurred_at": NOW.isoformat()},
         "type: type must be one of view, add_to_cart, inquiry, order, review"),
        ({"type": "view", "user_id": "u", "occurred_at": "2026-05-01 10:00:00", "product": {"product_id": "p"}},
         "occurred_at: '2026-05-01 10:00:00' is not an RFC 3339 timestamp with an offset"),
        ({"type": "view", "user_id": "u", "occurred_at": (NOW + timedelta(hours=1)).isoformat(),
          "product": {"product_id": "p"}}, "is more than 5 minutes in the future"),
        ({"type": "view", "user_id": "u", "occurred_at": NOW.isoformat()}, "a view event needs product"),
        ({"type": "add_to_cart", "user_id": "u", "occurred_at": NOW.isoformat(), "product": {"product_id": "p"},
          "quantity": 0}, "quantity: Input should be greater than or equal to 1"),
        ({"type": "view", "user_id": "u", "occurred_at": NOW.isoformat(),
          "product": {"product_id": "p", "price": 10.005}},
         "product.price: Decimal input should have no more than 2 decimal places"),
        ({"type": "review", "user_id": "u", "occurred_at": NOW.isoformat(), "product": {"product_id": "p"},
          "review": {"rating": 0}}, "review.rating: Input should be greater than or equal to 1"),
        ({"type": "order", "user_id": "u", "occurred_at": NOW.isoformat(),
          "order": {"order_id": "o", "status": "completed", "total": 5, "currency": "USD",
                    "items": [{"product_id": "p", "quantity": 1, "unit_price": 5}]}},
         "order.currency: currency 'USD' is not this deployment's currency 'CNY'"),
        ({"type": "inquiry", "user_id": "u", "occurred_at": NOW.isoformat(),
          "inquiry": {"inquiry_id": "q", "response_seconds": -1}},
         "inquiry.response_seconds: Input should be greater than or equal to 0"),
    ]


async def test_each_invalid_event_is_rejected_with_its_reason_while_the_rest_is_accepted(ingest):
    events = [view("ok-0")] + [event for event, _ in INVALID_EVENTS] + [view("ok-last")]
    response = await ingest.post("/v1/events", json={"events": events}, headers=INGEST)
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    assert [item["index"] for item in body["rejected"]] == list(range(1, len(INVALID_EVENTS) + 1))
    for item, (_, reason) in zip(body["rejected"], INVALID_EVENTS, strict=True):
        assert reason in item["error"], (item, reason)


async def test_rejected_event_is_listed_then_replayed_after_correction(ingest, broker):
    bad = view("u-7", event_id="evt-fix-me") | {"occurred_at": "yesterday"}
    response = await ingest.post("/v1/events", json={"events": [bad]}, headers=INGEST)
    assert response.json()["rejected"][0]["index"] == 0

    async def listed():
        page = (await ingest.get("/v1/rejected", headers=ADMIN)).json()
        return page["items"]

    items = await eventually(listed, what="the rejection to be listed")
    assert items[0]["raw"] == bad
    assert "occurred_at" in items[0]["error"]
    rejection_id = items[0]["rejection_id"]

    still_bad = await ingest.post("/v1/rejected/replay", json={"items": [{"rejection_id": rejection_id}]},
                                  headers=ADMIN)
    assert still_bad.json()["rejected"][0]["rejection_id"] == rejection_id
    assert "occurred_at" in still_bad.json()["rejected"][0]["error"]

    fixed = bad | {"occurred_at": (NOW - timedelta(days=1)).isoformat()}
    replay = await ingest.post("/v1/rejected/replay",
                               json={"items": [{"rejection_id": rejection_id, "event": fixed}]}, headers=ADMIN)
    assert replay.status_code == 200
    assert replay.json() == {"accepted": 1, "rejected": [], "ignored": []}
    records = await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=1)
    assert Event.from_json(records[0].value).event_id == "evt-fix-me"

    pending = (await ingest.get("/v1/rejected", headers=ADMIN)).json()["items"]
    assert pending == []
    replayed = (await ingest.get("/v1/rejected?status=replayed", headers=ADMIN)).json()["items"]
    assert replayed[0]["replayed_event_id"] == "evt-fix-me"
    again = await ingest.post("/v1/rejected/replay", json={"items": [{"rejection_id": rejection_id}]},
                              headers=ADMIN)
    assert "already replayed as event evt-fix-me" in again.json()["rejected"][0]["error"]
    unknown = await ingest.post("/v1/rejected/replay", json={"items": [{"rejection_id": "nope"}]}, headers=ADMIN)
    assert "unknown rejection_id" in unknown.json()["rejected"][0]["error"]


async def test_rejected_listing_paginates_with_an_opaque_cursor(ingest):
    bad = [view(f"u-{i}") | {"occurred_at": "bad"} for i in range(5)]
    await ingest.post("/v1/events", json={"events": bad}, headers=INGEST)

    async def all_listed():
        return len((await ingest.get("/v1/rejected?limit=100", headers=ADMIN)).json()["items"]) == 5

    await eventually(all_listed, what="five rejections")
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await ingest.get("/v1/rejected", params=params, headers=ADMIN)).json()
        seen += [item["rejection_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    bad_cursor = await ingest.get("/v1/rejected", params={"cursor": "!!"}, headers=ADMIN)
    assert bad_cursor.status_code == 400


async def test_rejections_are_kept_on_the_rejected_topic_with_raw_body_and_reason(ingest, broker):
    bad = view("u-3") | {"product": {"product_id": "p", "price": -1}}
    await ingest.post("/v1/events", json=bad, headers=INGEST)
    records = await read_topic(broker.bootstrap_servers, REJECTED_TOPIC, count=1)
    kept = orjson.loads(records[0].value)
    assert kept["raw"] == bad
    assert kept["error"] == "product.price: Input should be greater than or equal to 0"


async def _stored_rejections(database_url: str) -> list[tuple[str | None, str]]:
    """(person_key, raw) of every row of the rejected-events table, read directly, not through the API."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(rejected_events.c.person_key, rejected_events.c.raw))
            return sorted(((row.person_key, row.raw) for row in rows), key=repr)
    finally:
        await engine.dispose()


async def test_erasure_deletes_the_persons_rejected_events_and_keeps_the_others(ingest, settings):
    # Rejected for a bad timestamp, not for the ids: the body names the person as an accepted event would.
    erased = [view("u-erase") | {"occurred_at": "yesterday", "properties": {"email": "lilei@example.com"}},
              view("u-erase", product_id="p-2") | {"occurred_at": "2026-05-01 10:00:00"}]
    kept = view("u-keep") | {"occurred_at": "yesterday"}
    response = await ingest.post("/v1/events", json={"events": [*erased, kept]}, headers=INGEST)
    assert [item["index"] for item in response.json()["rejected"]] == [0, 1, 2]
    segment = {"type": "track", "event": "Product Viewed", "userId": "u-erase", "timestamp": "yesterday",
               "properties": {"product_id": "p-1"}}
    response = await ingest.post("/v1/track", json=segment, headers=INGEST)
    assert response.json()["rejected"][0]["index"] == 0

    async def listed_persons_are(persons: list[str]) -> bool:
        items = (await ingest.get("/v1/rejected", headers=ADMIN)).json()["items"]
        return sorted(item["raw"].get("user_id") or item["raw"].get("userId") for item in items) == persons

    await eventually(lambda: listed_persons_are(["u-erase", "u-erase", "u-erase", "u-keep"]),
                     what="the four rejections to be listed")
    assert [key for key, _ in await _stored_rejections(settings.database_url)] == [
        "u-erase", "u-erase", "u-erase", "u-keep"]

    await ensure_topics(settings.common.kafka, [PRIVACY_TOPIC])
    publisher = Publisher(settings.common.kafka, client_id="ingest-erasure-test")
    await publisher.start()
    try:
        await publish_erasure(publisher, ErasureRequest.new("u-erase", NOW))
    finally:
        await publisher.stop()

    await eventually(lambda: listed_persons_are(["u-keep"]), what="the erased person's rejections to go")
    stored = await _stored_rejections(settings.database_url)
    assert [key for key, _ in stored] == ["u-keep"]
    assert orjson.loads(stored[0][1]) == kept
    assert not [raw for _, raw in stored if "u-erase" in raw or "lilei" in raw]


@pytest.mark.parametrize(
    ("body", "detail"),
    [(b"{not json", "body is not valid JSON"), (b"[1, 2]", 'body must be one event object or {"events": [...]}'),
     (b'{"events": 5}', "`events` must be a list of event objects")],
)
async def test_unreadable_body_is_400(ingest, body, detail):
    response = await ingest.post("/v1/events", content=body, headers=INGEST)
    assert response.status_code == 400
    assert detail in response.json()["detail"]


async def test_unknown_key_is_401_and_wrong_scope_is_403(ingest):
    assert (await ingest.post("/v1/events", json=view("u"))).status_code == 401
    unknown = await ingest.post("/v1/events", json=view("u"), headers={"Authorization": "Bearer stolen"})
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == "missing or unknown API key"
    wrong = await ingest.post("/v1/events", json=view("u"), headers={"Authorization": "Bearer dev-read-key"})
    assert wrong.status_code == 403
    assert wrong.json()["detail"] == "this API key lacks the 'ingest' scope"
    admin = await ingest.post("/v1/events", json=view("u"), headers={"Authorization": "Bearer dev-admin-key"})
    assert admin.status_code == 200


async def test_limits_answer_413_and_accept_nothing(ingest, broker):
    too_many = await ingest.post("/v1/events", json={"events": [view("u")] * 51}, headers=INGEST)
    assert too_many.status_code == 413
    assert too_many.json()["detail"] == "51 events in one request; the limit is 50"
    big_event = view("u", properties={"blob": "x" * 3000})
    too_big_event = await ingest.post("/v1/events", json={"events": [view("u"), big_event]}, headers=INGEST)
    assert too_big_event.status_code == 413
    assert too_big_event.json()["detail"].startswith("event 1 is ")
    huge = orjson.dumps({"events": [view("u", properties={"blob": "y" * 1500})] * 45})
    assert (await ingest.post("/v1/events", content=huge, headers=INGEST)).status_code == 413
    bomb = gzip.compress(b'{"events": [' + b" " * 200_000 + b"]}")
    zipped = await ingest.post("/v1/events", content=bomb, headers=INGEST | {"Content-Encoding": "gzip"})
    assert zipped.status_code == 413
    assert await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=1, deadline_seconds=1) == []


@pytest.mark.parametrize(("tail", "reason"), [
    (gzip.compress(b'{"events": []}', mtime=0), "bytes follow the gzip member"),
    (b"\x00", "1 bytes follow the gzip member"),
    (b"garbage after the member", "bytes follow the gzip member"),
], ids=["a second member", "one zero byte", "text"])
async def test_bytes_after_the_gzip_member_are_400_with_the_reason(ingest, broker, tail, reason):
    body = gzip.compress(orjson.dumps({"events": [view("u-gz")]})) + tail
    response = await ingest.post("/v1/events", content=body, headers=INGEST | {"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    assert await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=1, deadline_seconds=1) == []


async def test_a_truncated_gzip_member_is_400(ingest):
    body = gzip.compress(orjson.dumps({"events": [view("u-gz")]}))[:-6]
    response = await ingest.post("/v1/events", content=body, headers=INGEST | {"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]


async def _one_rejection(ingest) -> str:
    await ingest.post("/v1/events", json={"events": [view("u-r") | {"type": "nope"}]}, headers=INGEST)

    async def listed():
        return (await ingest.get("/v1/rejected", headers=ADMIN)).json()["items"]

    return (await eventually(listed, what="the rejection to be listed"))[0]["rejection_id"]


async def test_replay_keeps_the_events_per_request_limit(ingest, broker):
    rejection_id = await _one_rejection(ingest)
    items = [{"rejection_id": rejection_id, "event": view("u-r")}] * 51
    response = await ingest.post("/v1/rejected/replay", json={"items": items}, headers=ADMIN)
    assert response.status_code == 413
    assert response.json()["detail"] == "51 events in one request; the limit is 50"
    assert await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=1, deadline_seconds=1) == []


async def test_replay_keeps_the_bytes_per_event_limit(ingest):
    rejection_id = await _one_rejection(ingest)
    big = view("u-r", properties={"blob": "x" * 3000})
    response = await ingest.post("/v1/rejected/replay", json={"items": [{"rejection_id": rejection_id, "event": big}]},
                                 headers=ADMIN)
    assert response.status_code == 413
    assert response.json()["detail"].startswith("event 0 is ")


async def test_replay_spends_from_the_keys_rate_limit(ingest):
    rejection_id = await _one_rejection(ingest)
    spent = await ingest.post("/v1/events", json={"events": [view("u")] * 50}, headers=ADMIN)
    assert spent.status_code == 200
    items = [{"rejection_id": rejection_id, "event": view("u-r")}] * 20
    over = await ingest.post("/v1/rejected/replay", json={"items": items}, headers=ADMIN)
    assert over.status_code == 429
    assert int(over.headers["Retry-After"]) >= 1


async def test_an_ingest_key_cannot_read_or_replay_rejected_events(ingest):
    assert (await ingest.get("/v1/rejected", headers=INGEST)).status_code == 403
    replay = await ingest.post("/v1/rejected/replay", json={"items": [{"rejection_id": "r"}]}, headers=INGEST)
    assert replay.status_code == 403


async def test_gzip_body_is_accepted(ingest):
    body = gzip.compress(orjson.dumps({"events": [view("u-gz")]}))
    response = await ingest.post("/v1/events", content=body, headers=INGEST | {"Content-Encoding": "gzip"})
    assert response.json()["accepted"] == 1


async def test_over_the_rate_limit_is_429_with_retry_after(ingest):
    first = await ingest.post("/v1/events", json={"events": [view("u")] * 50}, headers=INGEST)
    assert first.status_code == 200
    over = await ingest.post("/v1/events", json={"events": [view("u")] * 20}, headers=INGEST)
    assert over.status_code == 429
    assert int(over.headers["Retry-After"]) >= 1
    # another key has its own bucket
    other = await ingest.post("/v1/events", json=view("u"), headers={"Authorization": "Bearer dev-admin-key"})
    assert other.status_code == 200


async def test_broker_down_is_503_and_nothing_is_accepted(ingest, broker):
    broker.stop()
    response = await ingest.post("/v1/events", json={"events": [view("u-1"), view("u-2")]}, headers=INGEST)
    assert response.status_code == 503
    assert "nothing of this request was accepted" in response.json()["detail"]
    assert response.headers["Retry-After"] == "1"
    ready = await ingest.get("/readyz")
    assert ready.status_code == 503
    # The failing check is named; the exception text stays in the log (the answer is unauthenticated).
    assert ready.json()["checks"]["broker"] == "unreachable"
    assert "nothing of this request was accepted" in response.json()["detail"]
    assert "Error" not in response.json()["detail"] and "Error" not in ready.text


async def test_retried_request_without_event_ids_gets_the_same_ids(ingest, broker):
    body = {"events": [view("u-r"), view("u-r")]}
    await ingest.post("/v1/events", json=body, headers=INGEST)
    await ingest.post("/v1/events", json=body, headers=INGEST)
    records = await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=4)
    ids = [Event.from_json(r.value).event_id for r in records]
    assert len(ids) == 4
    assert len(set(ids)) == 2  # same content at another index is another event; a retry is not


async def test_health_readiness_and_metrics(ingest):
    assert (await ingest.get("/healthz")).json()["status"] == "ok"
    ready = (await ingest.get("/readyz")).json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "consumer:ingest-rejected": "ok",
                               "consumer:ingest-privacy": "ok"}
    await ingest.post("/v1/events", json={"events": [view("m"), view("m") | {"type": "nope"}]}, headers=INGEST)
    metrics = (await ingest.get("/metrics")).text
    assert 'shoploop_ingest_events_total{outcome="accepted"} 1.0' in metrics
    assert 'shoploop_ingest_events_total{outcome="rejected"} 1.0' in metrics
    assert 'shoploop_http_requests_total{method="POST",route="/v1/events",status="200"} 1.0' in metrics
    assert "shoploop_consumer_lag" in metrics
    assert (await ingest.get("/docs")).status_code == 200


async def test_readiness_names_an_unreachable_database_without_the_exception_text(settings, caplog):
    app = create_ingest_app(settings)
    async with serve_app(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        service = app.state.service

        async def unreachable() -> None:
            raise OSError("connection to 10.0.0.7:5432 refused: password for shoploop_secret rejected")

        service.database.ping = unreachable
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unreachable"
    assert "shoploop_secret" not in ready.text and "10.0.0.7" not in ready.text
    assert any("shoploop_secret" in str(getattr(record, "error", "")) for record in caplog.records)  # in the log


async def test_a_draining_service_refuses_writes_with_503_and_still_answers_reads(settings, tmp_path):
    settings = settings.model_copy(update={"common": settings.common.model_copy(
        update={"control_dir": str(tmp_path / "run")})})
    async with serve_app(create_ingest_app(settings)) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        assert (await client.post("/v1/events", json=view("d-1"), headers=INGEST)).status_code == 200
        [serving] = list((tmp_path / "run").glob("ingest-*.serving"))
        (tmp_path / "run" / "drain").touch()
        await eventually(lambda: serving.with_suffix(".drained").exists(), what="the service to report drained")
        refused = await client.post("/v1/events", json=view("d-2"), headers=INGEST)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
        assert refused.json()["code"] == "stopping"
        assert (await client.get("/v1/rejected", headers=ADMIN)).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "draining" in ready.json()["checks"]
    assert not serving.exists()  # a stopped process is no longer registered
