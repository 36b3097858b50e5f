"""A segmentation service on a per-test broker and database, with a settable clock and a way to publish
events straight onto shoploop.events.v1 (ingest is not under test here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from libs.common.db import Database
from libs.common.events import Event
from libs.common.kafka import EVENTS_TOPIC, SEGMENTS_TOPIC, Publisher
from libs.common.settings import CommonSettings
from services.segmentation.adapters.migrations import MIGRATIONS
from services.segmentation.adapters.tables import customer_events, metadata
from services.segmentation.bootstrap import EVENTS_GROUP, create_segmentation_app
from services.segmentation.runtime import SegmentationService
from services.segmentation.settings import MembershipSettings, SegmentationSettings
from tests.support import eventually, read_topic, serve_app

READ = {"Authorization": "Bearer dev-read-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
CAMPAIGNS = {"Authorization": "Bearer dev-campaigns-key"}


class SettableClock:
    """The service's notion of now, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def database(database_url) -> AsyncIterator[Database]:
    """The segmentation service's database, migrated, without the service."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        yield database
    finally:
        await database.close()


@dataclass
class Segmentation:
    client: httpx.AsyncClient
    service: SegmentationService
    publisher: Publisher
    clock: SettableClock
    sent: int = 0
    published: int = 0  # records sent, duplicates included

    async def send(self, events: Iterable[Event]) -> None:
        """Publish events keyed by person key, as ingest does; count the distinct ones."""
        records = [(event.person_key.encode(), event.to_json()) for event in events]
        await self.publisher.publish_many(EVENTS_TOPIC, records)
        self.published += len(records)

    async def processed(self) -> int:
        """Distinct events applied (every one keeps its customer_events row, erased persons' under a pseudonym)."""
        async with self.service.database.read() as connection:
            return (await connection.execute(select(func.count()).select_from(customer_events))).scalar_one()

    async def wait_processed(self, count: int) -> None:
        async def done() -> bool:
            return await self.processed() >= count
        await eventually(done, what=f"{count} events applied")

    async def wait_reported(self) -> None:
        """Until the consumer has finished every record sent, its after-commit hook included: from then on the
        scheduler knows every person with new facts (rows are visible a moment before the hook runs)."""
        async def done() -> bool:
            consumed = self.service.metrics.registry.get_sample_value(
                "shoploop_events_consumed_total", {"consumer": EVENTS_GROUP})
            return (consumed or 0) >= self.published
        await eventually(done, what=f"{self.published} records consumed")

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=READ)
        assert response.status_code == 200, response.text
        return response.json()


def rounds_of_everyone(service: SegmentationService) -> int:
    """Membership rounds of everyone the service has completed (its evaluation-time histogram's count)."""
    count = service.metrics.registry.get_sample_value("shoploop_segment_evaluation_seconds_count", {"scope": "all"})
    return int(count or 0)


async def segment_changes(broker, count: int, *, deadline_seconds: float = 15.0) -> list[dict[str, Any]]:
    """Records on shoploop.segments.v1 (up to ``count``), each with its Kafka key as ``key``."""
    records = await read_topic(broker.bootstrap_servers, SEGMENTS_TOPIC, count=count,
                               deadline_seconds=deadline_seconds)
    return [orjson.loads(record.value) | {"key": record.key.decode()} for record in records]


def changes(records: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(person_key, change, segment_id) of each record, in topic order per person."""
    return [(record["person_key"], record["change"], record["segment_id"]) for record in records]


def event(type_: str, person: str, at: datetime, event_id: str, **parts: Any) -> Event:
    """A published event; ``parts`` are the type's own fields (product, order, inquiry, review, traits, channel)."""
    if type_ in ("view", "add_to_cart", "review") and "product" not in parts:
        parts["product"] = {"product_id": "sku-1"}
    return Event.model_validate({"event_id": event_id, "type": type_, "user_id": person, "occurred_at": at,
                                 **parts})


def order(person: str, at: datetime, event_id: str, order_id: str, total: str = "100.00",
          status: str = "completed", **extra: Any) -> Event:
    body: dict[str, Any] = {"order_id": order_id, "status": status, **extra}
    if status == "completed":
        body |= {"total": total, "items": [{"product_id": "sku-1", "quantity": 1, "unit_price": total}]}
    return event("order", person, at, event_id, order=body)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def fast_common_settings(common_settings) -> CommonSettings:
    """The shared test settings with a shorter group session: tansu's joins take about half of it, and this
    service joins two groups before it is ready."""
    kafka = common_settings.kafka.model_copy(update={"session_timeout_ms": 1500, "heartbeat_interval_ms": 150})
    return common_settings.model_copy(update={"kafka": kafka})


@pytest.fixture
def settings(fast_common_settings, database_url) -> SegmentationSettings:
    return SegmentationSettings(
        database_url=database_url, common=fast_common_settings,
        membership=MembershipSettings(evaluation_interval_seconds=0.3),
    )


@pytest.fixture
async def segmentation(settings, clock) -> AsyncIterator[Segmentation]:
    app = create_segmentation_app(settings, clock=clock)
    publisher = Publisher(settings.common.kafka, client_id="segmentation-test")
    await publisher.start()
    try:
        async with serve_app(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            yield Segmentation(client=client, service=app.state.service, publisher=publisher, clock=clock)
    finally:
        await publisher.stop()
