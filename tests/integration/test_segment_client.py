"""The official segment-analytics-python client, pointed at shoploop, delivers events unchanged."""

from __future__ import annotations

import asyncio

import pytest
from segment.analytics import Client

from libs.common.events import Event
from libs.common.kafka import EVENTS_TOPIC
from services.ingest.bootstrap import create_ingest_app
from services.ingest.settings import IngestSettings
from tests.support import read_topic, serve_app


@pytest.fixture
async def ingest_url(common_settings, tmp_path):
    settings = IngestSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'ingest.db'}", common=common_settings)
    async with serve_app(create_ingest_app(settings)) as base_url:
        yield base_url


def _send_with_the_official_client(host: str) -> list[str]:
    errors: list[str] = []
    client = Client(write_key="dev-ingest-key", host=host, on_error=lambda e, batch: errors.append(repr(e)),
                    max_retries=0)
    campaign = {"campaign": {"source": "douyin", "medium": "cpc", "name": "may-sale"}}
    client.track("u-1", "Product Viewed", {"product_id": "sku-1", "name": "真丝连衣裙", "price": 399},
                 context=campaign, message_id="seg-view")
    client.track("u-1", "Product Added", {"product_id": "sku-1", "quantity": 2}, message_id="seg-cart")
    client.track("u-1", "Order Completed",
                 {"order_id": "1001", "total": 798, "coupon": "MAY10",
                  "products": [{"product_id": "sku-1", "quantity": 2, "price": 399}]}, message_id="seg-order")
    client.track("u-1", "Product Reviewed", {"product_id": "sku-1", "rating": 5, "review_body": "很好"},
                 message_id="seg-review")
    client.page("u-1", name="Home", message_id="seg-page")
    client.flush()
    client.join()
    return errors


async def test_official_segment_client_delivers_ecommerce_events_as_shoploop_types(ingest_url, broker):
    errors = await asyncio.to_thread(_send_with_the_official_client, ingest_url)
    assert errors == []
    records = await read_topic(broker.bootstrap_servers, EVENTS_TOPIC, count=4)
    events = {e.event_id: e for e in (Event.from_json(r.value) for r in records)}
    assert {e: events[e].type for e in events} == {
        "seg-view": "view", "seg-cart": "add_to_cart", "seg-order": "order", "seg-review": "review",
    }
    assert events["seg-view"].product.name == "真丝连衣裙"
    assert events["seg-view"].channel.source == "douyin"
    assert events["seg-view"].channel.campaign == "may-sale"
    assert events["seg-cart"].quantity == 2
    order = events["seg-order"].order
    assert (order.status, str(order.total), order.coupon_code, order.items[0].quantity) == ("completed", "798", "MAY10", 2)
    assert events["seg-review"].review.rating == 5
    assert {r.key for r in records} == {b"u-1"}
