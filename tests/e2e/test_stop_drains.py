"""Ctrl-C on `make run` drains before it stops (issue 9): the embedded broker keeps records in memory only, so
the stack refuses new writes, waits until every consumer group has read everything accepted, and only then stops
the services and the broker. Every event answered 200 just before the interrupt is counted after a restart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx

from libs.common.events import ValidationContext, format_timestamp, validate_event
from libs.common.kafka import EVENTS_TOPIC, Publisher
from libs.common.settings import KafkaSettings
from tests.e2e.stack import EmbeddedStack

INGEST = {"Authorization": "Bearer dev-ingest-key"}
READ = {"Authorization": "Bearer dev-read-key"}
PERSONS = [f"drain-{uuid.uuid4().hex[:8]}-{n}" for n in range(10)]
BACKLOG = 60_000
WHEN = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def request_body(number: int) -> dict:
    """99 views and one order (of one of the persons), all with their own event ids."""
    views = [{"event_id": f"v-{number}-{i}", "type": "view", "user_id": PERSONS[i % len(PERSONS)],
              "occurred_at": format_timestamp(WHEN), "product": {"product_id": f"sku-{i % 7}", "name": "真丝连衣裙"}}
             for i in range(99)]
    order = {"event_id": f"o-{number}", "type": "order", "user_id": PERSONS[number % len(PERSONS)],
             "occurred_at": format_timestamp(WHEN),
             "order": {"order_id": f"order-{number}", "status": "completed", "total": 10,
                       "items": [{"product_id": "sku-1", "quantity": 1, "unit_price": 10}]}}
    return {"events": [*views, order]}


async def publish_views(bootstrap_servers: str, count: int) -> None:
    """``count`` valid views put on the events topic directly, as ingest publishes them."""
    context = ValidationContext(received_at=datetime.now(UTC), currency="CNY")
    events = [validate_event({"event_id": f"backlog-{n}", "type": "view", "user_id": f"backlog-{n % 5000}",
                              "occurred_at": format_timestamp(WHEN), "product": {"product_id": f"sku-{n % 50}"}},
                             index=0, context=context) for n in range(count)]
    publisher = Publisher(KafkaSettings(bootstrap_servers=bootstrap_servers), client_id="backlog")
    await publisher.start()
    try:
        for start in range(0, count, 5000):
            await publisher.publish_many(EVENTS_TOPIC, [(e.person_key.encode(), e.to_json())
                                                        for e in events[start : start + 5000]], wait_seconds=60)
    finally:
        await publisher.stop()


async def test_every_event_answered_200_before_ctrl_c_is_counted_after_a_restart(tmp_path):
    stack = EmbeddedStack(tmp_path / "data")
    try:
        urls = await stack.start()
        accepted: list[int] = []
        refusals: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=urls["ingest"], headers=INGEST, timeout=30) as ingest:
            number = 0
            for number in range(30):
                response = await ingest.post("/v1/events", json=request_body(number))
                assert response.status_code == 200, response.text
                accepted.append(number)
            # A backlog the consumers need seconds for (what a busy storefront leaves), then one more request:
            # its events are behind the backlog on their partitions.
            await publish_views(urls["broker"], BACKLOG)
            number += 1
            response = await ingest.post("/v1/events", json=request_body(number))
            assert response.status_code == 200, response.text
            accepted.append(number)
            stack.interrupt()  # right after the last 200: those events are still being read by the consumers
            # Until the stack is down, a request is either refused (nothing accepted) or accepted (and counted).
            while True:
                number += 1
                try:
                    response = await ingest.post("/v1/events", json=request_body(number))
                except httpx.TransportError:
                    break
                if response.status_code == 200:
                    accepted.append(number)
                else:
                    refusals.append(response)
                    if len(refusals) >= 3:
                        break
        assert stack.wait() == 0, stack.output
        assert "drained in" in stack.output, stack.output
        assert refusals, "no request was refused while the stack drained"
        for refusal in refusals:
            assert refusal.status_code == 503 and refusal.headers["Retry-After"], refusal.text
            assert refusal.json()["code"] == "stopping"

        # A new broker (the old one's memory is gone) and the same databases: everything accepted is there.
        urls = await stack.start()
        span = {"from": format_timestamp(WHEN - timedelta(days=1)), "to": format_timestamp(WHEN + timedelta(days=1))}
        async with httpx.AsyncClient(headers=READ, timeout=30) as client:
            kpis = (await client.get(f"{urls['funnel']}/v1/kpis", params=span)).json()
            assert (kpis["pv"], kpis["orders"]) == (99 * len(accepted) + BACKLOG, len(accepted)), kpis
            orders = 0
            for person in PERSONS:
                profile = await client.get(f"{urls['segmentation']}/v1/customers/{person}")
                assert profile.status_code == 200, profile.text
                orders += profile.json()["orders"]
            assert orders == len(accepted)
    finally:
        stack.kill()
