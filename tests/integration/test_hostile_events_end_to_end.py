"""Whatever ingest accepts is counted by every consumer, and no report fails afterwards (SPEC.md "Events": no
accepted event is dead-lettered for its content, no sum of accepted values overflows anywhere).

Ingest, funnel and segmentation run on one broker, on SQLite and on PostgreSQL. Hypothesis sends batches of
events with fields at and past SPEC.md's bounds (tests/hostile_events.py), after one customer buying the largest
order line a thousand times; each event ingest answers as accepted must show in the funnel's KPIs and product
metrics and in segmentation's profile (orders, gmv), exactly as the domain functions compute them from the
accepted events; every GET report route of both services then answers 200 over the widest range allowed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import MAX_NESTING, Event, ValidationContext, format_timestamp, validate_event
from libs.common.http import money
from services.funnel.bootstrap import EVENTS_GROUP as FUNNEL_EVENTS
from services.funnel.domain.kpis import range_kpis
from services.funnel.domain.products import product_metrics
from services.funnel.handlers import fact_of
from services.funnel.schemas import kpis_public
from services.segmentation.bootstrap import EVENTS_GROUP as SEGMENTATION_EVENTS
from services.segmentation.domain.customers import OrderRecord, OrderStatus, counted_orders
from tests.hostile_events import hostile_events, nested
from tests.integration.test_erasure_across_services import (  # noqa: F401  (fixtures)
    Stack,
    databases,
    stack,
    stack_common,
)
from tests.support import eventually

INGEST = {"Authorization": "Bearer dev-ingest-key", "Content-Type": "application/json"}
READ = {"Authorization": "Bearer dev-read-key"}
NOW = datetime.now(UTC)
# Accepted events are validated again here to know what they mean; a clock far ahead keeps the future rule
# from refusing here what ingest accepted moments ago.
LATER = ValidationContext(received_at=NOW + timedelta(days=1), currency="CNY")
FUNNEL_REPORTS = ("/v1/kpis", "/v1/funnels/default/result", "/v1/products", "/v1/channels")


def _prefixed(raw: Any, tag: str) -> Any:
    """Ids made unique to this example (the same event_id counts once forever), hostile content kept."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    if isinstance(raw.get("event_id"), str):
        raw["event_id"] = f"{tag}{raw['event_id']}"
    order = raw.get("order")
    if isinstance(order, dict) and isinstance(order.get("order_id"), str):
        raw["order"] = {**order, "order_id": f"{tag}{order['order_id']}"}
    return raw


class Sent:
    """The events ingest accepted so far, and what the domain functions make of them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def persons(self) -> set[str]:
        return {event.person_key for event in self.events}

    def customer(self, person: str) -> tuple[int, float | None]:
        records = [OrderRecord(e.event_id, e.person_key, e.order.order_id, OrderStatus(e.order.status), e.occurred_at,
                               e.order.total or Decimal(0)) for e in self.events if e.order is not None]
        mine = [order for order in counted_orders(records) if order.person_key == person]
        return len(mine), money(sum((order.total for order in mine), Decimal(0)))

    def facts(self) -> list[Any]:
        return [fact for fact in map(fact_of, self.events) if fact is not None]


async def post(services: Stack, sent: Sent, raws: list[Any]) -> None:
    response = await services.ingest.post("/v1/events", content=json.dumps({"events": raws}, ensure_ascii=False),
                                       headers=INGEST)
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["detail"], response.text
        return
    answer = response.json()
    rejected = {item["index"] for item in answer["rejected"]}
    accepted = [validate_event(raw, index=index, context=LATER) for index, raw in enumerate(raws)
                if index not in rejected]
    assert answer["accepted"] == len(accepted), answer
    sent.events.extend(accepted)
    total = len(sent.events)
    await eventually(lambda: services.consumed("funnel", FUNNEL_EVENTS) >= total, what="the funnel to apply every event")
    await eventually(lambda: services.consumed("segmentation", SEGMENTATION_EVENTS) >= total,
                     what="segmentation to apply every event")


async def counted_everywhere(services: Stack, sent: Sent) -> None:
    """Each accepted event shows: funnel KPIs and product metrics, segmentation profiles, as the domain says."""
    span = {"from": format_timestamp(NOW - timedelta(days=1000)), "to": format_timestamp(NOW + timedelta(days=1))}
    start, end = (datetime.fromisoformat(span[name].replace("Z", "+00:00")) for name in ("from", "to"))
    facts = sent.facts()
    kpis = await get(services.funnel, "/v1/kpis", **span, as_of=span["to"])
    expected = kpis_public(range_kpis(facts, start, end, end))
    assert {name: kpis[name] for name in expected} == expected
    products = await get(services.funnel, "/v1/products", **span, as_of=span["to"], limit=1000)
    served = {item["product_id"]: (item["units"], item["gmv"], item["views"]) for item in products["items"]}
    assert served == {m.product_id: (m.units, money(m.gmv), m.views)
                      for m in product_metrics(facts, start, end, end)}
    for person in sent.persons():
        profile = await get(services.segmentation, f"/v1/customers/{person}", as_of=span["to"])
        assert (profile["orders"], profile["gmv"]) == sent.customer(person), person


async def no_report_fails(services: Stack) -> None:
    widest = {"from": format_timestamp(NOW - timedelta(days=1095)), "to": format_timestamp(NOW + timedelta(days=1))}
    for path in FUNNEL_REPORTS:
        await get(services.funnel, path, **widest)
    await get(services.funnel, "/v1/kpis", granularity="day", **{"from": format_timestamp(NOW - timedelta(days=365)),
                                                                  "to": widest["to"]})
    await get(services.funnel, "/v1/products/matrix")
    await get(services.funnel, "/v1/funnels")
    for path in ("/v1/rfm", "/v1/lifecycle", "/v1/tiers", "/v1/segments"):
        await get(services.segmentation, path)
    for segment in ("tier:diamond", "lifecycle:new", "rfm:champion"):
        await get(services.segmentation, f"/v1/segments/{segment}/members")


async def get(client: Any, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=READ)
    assert response.status_code == 200, f"{path} {params}: {response.status_code} {response.text}"
    return response.json()


def edge_events() -> list[dict[str, Any]]:
    """Events at each bound (accepted) and just past it (rejected): SPEC.md "Events"."""
    def view(**fields: Any) -> dict[str, Any]:
        return {"type": "view", "user_id": "edge", "occurred_at": format_timestamp(NOW - timedelta(hours=1)),
                "product": {"product_id": "sku-edge"}} | fields

    def order(order_id: str, **fields: Any) -> dict[str, Any]:
        return {"type": "order", "user_id": "edge", "occurred_at": format_timestamp(NOW - timedelta(hours=2)),
                "order": {"order_id": order_id, "status": "completed", "total": "1000000000000.00",
                          "items": [{"product_id": "sku-edge", "quantity": 1, "unit_price": "0.01"}]}} | fields

    return [
        view(product={"product_id": "i" * 256, "name": "tab\tnew\nline\x01\x7f 真丝", "category": "c\x1f"}),
        view(product={"product_id": "sku-edge", "name": "nul\x00"}),
        view(user_id="edge\x00"), view(session_id="s\x01"), view(event_id="e" * 257),
        view(properties=nested(MAX_NESTING)), view(properties=nested(MAX_NESTING + 1)),
        view(channel={"source": "抖音\n", "campaign": "c" * 256}), view(channel={"source": "nul\x00"}),
        order("edge-1970", occurred_at="1970-01-01T00:00:00Z"),
        order("edge-1969", occurred_at="1969-12-31T23:59:59Z"),
        order("edge-year-1", occurred_at="0001-01-01T00:00:00+01:00"),
        order("edge-year-9999", occurred_at="9999-12-31T23:59:59-01:00"),
        order("edge-line", order={"order_id": "edge-line", "status": "completed", "total": "1.00", "items": [
            {"product_id": "sku-edge", "quantity": 1_000_000, "unit_price": "1000000.00"},
            {"product_id": "sku-edge", "quantity": 1, "unit_price": "999999999999.99"}]}),
        order("edge-big", order={"order_id": "edge-big", "status": "completed", "total": "1000000000000.01",
                                 "items": [{"product_id": "sku-edge", "quantity": 1, "unit_price": "1"}]}),
    ]


async def test_every_accepted_event_is_counted_and_no_report_fails_after(stack):  # noqa: F811
    sent = Sent()
    await post(stack, sent, edge_events())
    accepted = {event.event_id for event in sent.events}
    assert len(accepted) == 5, sent.events  # the first view, the channel at its bounds, 32 levels, 1970, 1 line
    # The largest line a thousand times for one customer: 10^15 of gmv, a diamond tier, the top of every sum.
    whale = [{"type": "order", "user_id": "whale", "occurred_at": format_timestamp(NOW - timedelta(minutes=n)),
              "order": {"order_id": f"w-{n}", "status": "completed", "total": "1000000000000.00",
                        "items": [{"product_id": "sku-gold", "quantity": 1_000_000, "unit_price": "1000000.00"}]}}
             for n in range(1000)]
    await post(stack, sent, whale)
    assert sent.customer("whale") == (1000, 1e15)
    await counted_everywhere(stack, sent)

    loop = asyncio.get_running_loop()
    examples = itertools.count()
    moment = NOW - timedelta(minutes=1)

    @settings(max_examples=6, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(batches=st.lists(st.tuples(st.sampled_from(["p0", "p1", "whale"]), st.data()), min_size=1, max_size=6))
    def hostile(batches: list[tuple[str, st.DataObject]]) -> None:
        tag = f"x{next(examples)}-"
        raws = [_prefixed(data.draw(hostile_events(moment, person=person if person == "whale" else f"{tag}{person}")),
                          f"{tag}{index}-")
                for index, (person, data) in enumerate(batches)]
        asyncio.run_coroutine_threadsafe(post(stack, sent, raws), loop).result()
        asyncio.run_coroutine_threadsafe(counted_everywhere(stack, sent), loop).result()

    await loop.run_in_executor(None, hostile)
    await no_report_fails(stack)
    assert next(examples) == 6
    assert len(sent.events) > len(whale)  # hostile events got through too, beside the whale's
