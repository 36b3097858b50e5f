"""A campaigns service on a per-test broker and database, with a settable clock, a webhook receiver, and ways to
publish events and segment changes straight onto their topics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from libs.common.events import Event, format_timestamp
from libs.common.kafka import EVENTS_TOPIC, SEGMENTS_TOPIC, Publisher
from libs.common.settings import CommonSettings
from services.campaigns.bootstrap import create_campaigns_app
from services.campaigns.runtime import CampaignsService
from services.campaigns.settings import CampaignsSettings, SchedulerSettings, WebhookSettings
from tests.integration.campaigns.receiver import Receiver, running_receiver
from tests.support import serve_app

READ = {"Authorization": "Bearer dev-read-key"}
WRITE = {"Authorization": "Bearer dev-campaigns-key"}
INGEST = {"Authorization": "Bearer dev-ingest-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
# Fast retries for tests: the schedule's shape (growing, then long) with sub-second steps.
TEST_RETRIES = [0.05, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]


class SettableClock:
    """The service's notion of now: real time moved by an offset the test sets (retry delays still pass)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    @property
    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def move(self, delta: timedelta) -> None:
        self.offset += delta

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Campaigns:
    client: httpx.AsyncClient
    service: CampaignsService
    publisher: Publisher
    clock: SettableClock
    receiver: Receiver

    async def send(self, events: Iterable[Event]) -> None:
        await self.publisher.publish_many(EVENTS_TOPIC, [(e.person_key.encode(), e.to_json()) for e in events])

    async def enter_segment(self, segment_id: str, persons: Iterable[str], at: datetime,
                            change: str = "entered") -> None:
        """Publish segment change records as the segmentation service does."""
        records = [(person.encode(), orjson.dumps({
            "change_id": uuid.uuid4().hex, "change": change, "segment_id": segment_id, "segment_name": segment_id,
            "segment_kind": segment_id.split(":")[0], "person_key": person, "as_of": format_timestamp(at),
        })) for person in persons]
        await self.publisher.publish_many(SEGMENTS_TOPIC, records)

    async def create(self, **overrides: Any) -> dict[str, Any]:
        body = campaign_body(self.receiver.url, **overrides)
        response = await self.client.post("/v1/campaigns", json=body, headers=WRITE)
        assert response.status_code == 201, response.text
        campaign = response.json()
        self.receiver.secrets[campaign["campaign_id"]] = campaign["webhook_secret"]
        return campaign

    async def act(self, campaign_id: str, action: str) -> dict[str, Any]:
        response = await self.client.post(f"/v1/campaigns/{campaign_id}/{action}", headers=WRITE)
        assert response.status_code == 200, response.text
        return response.json()

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=READ)
        assert response.status_code == 200, response.text
        return response.json()

    async def all_pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items, cursor = [], None
        while True:
            page = await self.get(path, limit=1000, **params, **({"cursor": cursor} if cursor else {}))
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items


def campaign_body(webhook_url: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "win-back",
        "audience": {"kind": "segment_entered", "segment_id": "lifecycle:dormant"},
        "offer": {"kind": "coupon", "percent_off": 20, "min_spend": 100, "expires_in_days": 14},
        "variants": [{"name": "coupon", "split_bp": 8000, "message": "We miss you: 20% off"}],
        "holdout_bp": 2000,
        "window_days": 7,
        "webhook_url": webhook_url,
    }
    body.update(overrides)
    return body


def event(type_: str, person: str, at: datetime, event_id: str, **parts: Any) -> Event:
    if type_ in ("view", "add_to_cart", "review") and "product" not in parts:
        parts["product"] = {"product_id": "sku-1"}
    return Event.model_validate({"event_id": event_id, "type": type_, "user_id": person, "occurred_at": at, **parts})


def order(person: str, at: datetime, event_id: str, order_id: str, total: str = "100.00", status: str = "completed",
          **extra: Any) -> Event:
    body: dict[str, Any] = {"order_id": order_id, "status": status, **extra}
    if status == "completed":
        body |= {"total": total, "items": [{"product_id": "sku-1", "quantity": 1, "unit_price": total}]}
    return event("order", person, at, event_id, order=body)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def fast_common_settings(common_settings) -> CommonSettings:
    kafka = common_settings.kafka.model_copy(update={"session_timeout_ms": 1500, "heartbeat_interval_ms": 150})
    return common_settings.model_copy(update={"kafka": kafka})


@pytest.fixture
def settings(fast_common_settings, database_url) -> CampaignsSettings:
    return CampaignsSettings(
        database_url=database_url, common=fast_common_settings,
        webhooks=WebhookSettings(retry_schedule_seconds=TEST_RETRIES, timeout_seconds=5, claim_lease_seconds=5),
        scheduler=SchedulerSettings(poll_seconds=0.1),
    )


@pytest.fixture
async def campaigns(settings, clock) -> AsyncIterator[Campaigns]:
    app = create_campaigns_app(settings, clock=clock)
    publisher = Publisher(settings.common.kafka, client_id="campaigns-test")
    await publisher.start()
    try:
        async with running_receiver() as receiver, serve_app(app) as base_url, \
                httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            yield Campaigns(client=client, service=app.state.service, publisher=publisher, clock=clock,
                            receiver=receiver)
    finally:
        await publisher.stop()


