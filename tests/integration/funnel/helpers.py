"""Story builders and plumbing shared by the funnel service's integration tests."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from fastapi import FastAPI

from libs.common.events import Event, format_timestamp
from libs.common.kafka import EVENTS_TOPIC, Publisher
from services.funnel.bootstrap import EVENTS_GROUP, create_funnel_app
from services.funnel.domain.facts import FunnelEvent
from services.funnel.handlers import fact_of
from services.funnel.settings import FunnelSettings
from tests.support import eventually, serve_app

READ = {"Authorization": "Bearer dev-read-key"}
# Defining and deleting funnels needs the campaigns scope (SPEC.md "Auth").
CAMPAIGNS = {"Authorization": "Bearer dev-campaigns-key"}
_CENT = Decimal("0.01")


def _event(kind: str, person: str, at: datetime, event_id: str | None, source: str | None, **parts: Any) -> Event:
    body: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()), "type": kind, "user_id": person, "occurred_at": format_timestamp(at),
        **{name: part for name, part in parts.items() if part is not None},
    }
    if source is not None:
        body["channel"] = {"source": source}
    return Event.model_validate(body)


def _product(product_id: str | None, **attributes: Any) -> dict[str, Any] | None:
    if product_id is None:
        return None
    return {"product_id": product_id, **{name: value for name, value in attributes.items() if value is not None}}


def view(person: str, at: datetime, product: str = "p1", *, source: str | None = None, category: str | None = None,
         price: str | None = None, name: str | None = None, tier: str | None = None,
         event_id: str | None = None) -> Event:
    return _event("view", person, at, event_id, source,
                  product=_product(product, category=category, price=price, name=name, tier=tier))


def cart(person: str, at: datetime, product: str = "p1", *, quantity: int = 1, source: str | None = None,
         event_id: str | None = None) -> Event:
    return _event("add_to_cart", person, at, event_id, source, product=_product(product), quantity=quantity)


def inquiry(person: str, at: datetime, product: str | None = None, *, response_seconds: float | None = None,
            source: str | None = None, event_id: str | None = None) -> Event:
    details = {"inquiry_id": f"q-{uuid.uuid4()}", "response_seconds": response_seconds}
    return _event("inquiry", person, at, event_id, source, product=_product(product),
                  inquiry={k: v for k, v in details.items() if v is not None})


def review(person: str, at: datetime, rating: int, product: str = "p1", *, event_id: str | None = None) -> Event:
    return _event("review", person, at, event_id, None, product=_product(product), review={"rating": rating})


def order(person: str, at: datetime, order_id: str, items: Sequence[tuple[str, int, str]] = (("p1", 1, "10"),), *,
          total: str | None = None, categories: dict[str, str] | None = None, source: str | None = None,
          event_id: str | None = None) -> Event:
    """A completed order of (product_id, quantity, unit_price) lines; total defaults to their sum."""
    lines = [
        {"product_id": product, "quantity": quantity, "unit_price": price,
         **({"category": categories[product]} if categories and product in categories else {})}
        for product, quantity, price in items
    ]
    amount = total if total is not None else str(sum(Decimal(price) * quantity for _, quantity, price in items))
    return _event("order", person, at, event_id, source,
                  order={"order_id": order_id, "status": "completed", "items": lines, "total": amount})


def refund(person: str, at: datetime, order_id: str, amount: str | None = None, *,
           event_id: str | None = None) -> Event:
    details = {"order_id": order_id, "status": "refunded", **({"refund_amount": amount} if amount else {})}
    return _event("order", person, at, event_id, None, order=details)


def facts(events: Iterable[Event]) -> list[FunnelEvent]:
    """What the domain computes on directly: the brute-force side of every comparison."""
    return [fact for event in events if (fact := fact_of(event)) is not None]


def money(amount: Decimal | None) -> float | None:
    """SPEC.md: money as a number rounded to 2 decimals."""
    return None if amount is None else float(amount.quantize(_CENT, rounding="ROUND_HALF_UP"))


async def publish(publisher: Publisher, events: Iterable[Event]) -> int:
    records = [(event.person_key.encode(), event.to_json()) for event in events]
    await publisher.publish_many(EVENTS_TOPIC, records)
    return len(records)


def consumed(app: FastAPI) -> float:
    """Records the app's event consumer has applied, duplicates included."""
    registry = app.state.service.metrics.registry
    return registry.get_sample_value("shoploop_events_consumed_total", {"consumer": EVENTS_GROUP}) or 0.0


async def wait_consumed(app: FastAPI, count: int) -> None:
    await eventually(lambda: consumed(app) >= count, deadline_seconds=30, what=f"{count} records consumed")


class Funnel:
    """A running funnel app and a client holding the read key."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params={k: v for k, v in params.items() if v is not None})
        assert response.status_code == 200, response.text
        return response.json()


@asynccontextmanager
async def running_funnel(settings: FunnelSettings, *, ready_path: str = "/readyz") -> AsyncIterator[Funnel]:
    app = create_funnel_app(settings)
    async with serve_app(app, ready_path=ready_path) as base_url, httpx.AsyncClient(base_url=base_url, headers=READ, timeout=30) as client:
        yield Funnel(app, client)


def shop_stream(count: int, *, seed: int, start: datetime, days: int = 10) -> list[Event]:
    """A busy shop's events over `days` from `start`: many persons, reused order ids, refunds (some of unknown
    orders) and a few events sent twice."""
    rng = random.Random(seed)
    span_seconds = days * 24 * 3600
    events: list[Event] = []
    for _ in range(count):
        person = f"u{rng.randrange(200)}"
        at = start + timedelta(seconds=rng.randrange(span_seconds))
        product = f"sku{rng.randrange(20)}"
        source = rng.choice((None, None, "google", "douyin", "newsletter"))
        roll = rng.random()
        if events and roll < 0.03:
            events.append(rng.choice(events))  # the same event_id again
        elif roll < 0.5:
            events.append(view(person, at, product, source=source, category=f"c{int(product[3:]) % 4}",
                               price=str(10 + int(product[3:]) * 7)))
        elif roll < 0.65:
            events.append(cart(person, at, product, source=source))
        elif roll < 0.7:
            events.append(inquiry(person, at, product, response_seconds=rng.choice((None, 12, 300))))
        elif roll < 0.75:
            events.append(review(person, at, rng.randint(1, 5), product))
        elif roll < 0.93:
            lines = [(product, rng.randint(1, 3), str(10 + int(product[3:]) * 7))]
            events.append(order(person, at, f"o{rng.randrange(count // 10)}", lines, source=source))
        else:
            events.append(refund(person, at, f"o{rng.randrange(count // 8)}", rng.choice((None, "5"))))
    return events
