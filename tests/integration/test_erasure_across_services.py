"""Erasure across services (issue 4, SPEC.md "Customers": erasure removes the person's personal data in
every service, aggregate counts already published stay).

Ingest, funnel and segmentation run on one broker, each with its own database (both SQLite and
PostgreSQL). Two persons' events go in through ingest, and for each one event that ingest rejects (kept,
raw body included, in ingest's own table); the segmentation service is asked to erase one.
Then every table of every service's database is read directly (the tables are listed by SQLAlchemy's
inspector, so a table added later is checked too) and no value of any row may contain the erased
person's key or any of their trait values, while the other person's rows are exactly as before and the
funnel's aggregates are unchanged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import MetaData, Table, inspect, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.events import format_timestamp
from libs.common.privacy import privacy_group
from libs.common.settings import CommonSettings
from services.funnel.bootstrap import EVENTS_GROUP as FUNNEL_EVENTS
from services.funnel.bootstrap import create_funnel_app
from services.funnel.settings import FunnelSettings
from services.ingest.bootstrap import REJECTED_GROUP as INGEST_REJECTED
from services.ingest.bootstrap import create_ingest_app
from services.ingest.settings import IngestSettings
from services.segmentation.adapters.tables import membership_changes
from services.segmentation.bootstrap import EVENTS_GROUP as SEGMENTATION_EVENTS
from services.segmentation.bootstrap import create_segmentation_app
from services.segmentation.settings import MembershipSettings, SegmentationSettings
from tests.conftest import POSTGRES_DSN
from tests.support import eventually, serve_app

INGEST = {"Authorization": "Bearer dev-ingest-key"}
READ = {"Authorization": "Bearer dev-read-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
SERVICES = ("ingest", "funnel", "segmentation")
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Person:
    """A person with distinctive personal data: key and trait values found nowhere else."""

    key: str
    traits: dict[str, str]

    @classmethod
    def new(cls, label: str, name: str) -> Person:
        tag = uuid.uuid4().hex[:10]
        return cls(key=f"{label}-{tag}", traits={
            "email": f"{label}.{tag}@example.com", "name": f"{name}{tag}", "phone": f"+86 138 {int(tag, 16) % 10**8:08d}",
        })

    def needles(self) -> set[str]:
        """What must not survive the person's erasure."""
        return {form for value in (self.key, *self.traits.values()) for form in forms(value)}


def forms(value: str) -> set[str]:
    """A value as stored verbatim or inside JSON with \\uXXXX escapes, to be compared case-insensitively."""
    return {value.casefold(), json.dumps(value)[1:-1].casefold()}


def _at(days: float) -> str:
    return format_timestamp(NOW - timedelta(days=days))


def _order(person: Person, days: float, total: str, **extra: Any) -> dict[str, Any]:
    return {"type": "order", "user_id": person.key, "occurred_at": _at(days), **extra,
            "order": {"order_id": f"ord-{uuid.uuid4().hex}", "status": "completed", "total": total,
                      "items": [{"product_id": "sku-dress", "quantity": 1, "unit_price": total}]}}


def history(person: Person, *, orders: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """Native events of one person (event ids assigned by ingest, so none of them names the person)."""
    product = {"product_id": "sku-dress", "name": "真丝连衣裙", "category": "dresses", "price": "399.00"}
    return [
        {"type": "view", "user_id": person.key, "occurred_at": _at(20), "product": product,
         "channel": {"source": "douyin", "campaign": "spring"}, "session_id": f"s-{uuid.uuid4().hex}"},
        {"type": "add_to_cart", "user_id": person.key, "occurred_at": _at(19.9), "product": product, "quantity": 2},
        {"type": "inquiry", "user_id": person.key, "occurred_at": _at(19.8),
         "inquiry": {"inquiry_id": f"q-{uuid.uuid4().hex}", "topic": "尺码", "response_seconds": 30}},
        # Personal data sent where no service is meant to keep it: it must not stay anywhere either.
        *[_order(person, days, total, properties={"contact": person.traits["email"]}) for days, total in orders],
        {"type": "review", "user_id": person.key, "occurred_at": _at(1), "product": product,
         "review": {"rating": 5, "text": "很好"}},
    ]


def rejected(person: Person) -> dict[str, Any]:
    """An event ingest rejects for its timestamp, not its ids: ingest keeps it, with the raw body, for replay."""
    return {"type": "view", "user_id": person.key, "occurred_at": "yesterday", "product": {"product_id": "sku-dress"},
            "properties": {"contact": person.traits["email"]}}


def identify(person: Person) -> dict[str, Any]:
    """A Segment identify call: the traits SPEC.md keeps on the customer profile."""
    return {"userId": person.key, "timestamp": _at(20.5), "traits": person.traits}


# ---------------------------------------------------------------------------------------------- databases

def _database_of(url: str, service: str) -> str:
    """The service's own database, of the kind ``url`` is: a SQLite file beside it, or a PostgreSQL database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        return parsed.set(database=str(path.with_name(f"{service}.db"))).render_as_string(hide_password=False)
    return parsed.set(database=f"{parsed.database}_{service}").render_as_string(hide_password=False)


@pytest.fixture
async def databases(database_url) -> AsyncIterator[dict[str, str]]:
    """One new database per service (SPEC.md: no service reads another's tables); PostgreSQL ones dropped after."""
    urls = {service: _database_of(database_url, service) for service in SERVICES}
    yield urls
    if make_url(database_url).get_backend_name() == "postgresql":
        admin = await asyncpg.connect(POSTGRES_DSN)
        try:
            for url in urls.values():
                await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
        finally:
            await admin.close()


Rows = dict[str, list[tuple[Any, ...]]]


def _every_row(connection: Connection) -> Rows:
    inspector = inspect(connection)
    rows: Rows = {}
    for schema in inspector.get_schema_names():
        if schema == "information_schema" or schema.startswith("pg_"):
            continue
        for name in inspector.get_table_names(schema=schema):
            table = Table(name, MetaData(), schema=schema, autoload_with=connection)
            rows[f"{schema}.{name}"] = [tuple(row) for row in connection.execute(select(table))]
    return rows


async def every_row(url: str) -> Rows:
    """Every row of every table of the database, read directly (not through the service)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_every_row)
    finally:
        await engine.dispose()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray | memoryview) else str(value)


def rows_naming(rows: Rows, needles: Iterable[str]) -> Rows:
    """Per table, the rows with a value containing any of ``needles`` (case-insensitively)."""
    needles = list(needles)
    found: Rows = {}
    for table, table_rows in rows.items():
        hits = [row for row in table_rows
                if any(needle in _text(value).casefold() for value in row if value is not None for needle in needles)]
        if hits:
            found[table] = sorted(hits, key=repr)
    return found


# ---------------------------------------------------------------------------------------------- services

@dataclass
class Stack:
    ingest: httpx.AsyncClient
    funnel: httpx.AsyncClient
    segmentation: httpx.AsyncClient
    apps: dict[str, FastAPI]

    def consumed(self, service: str, group: str) -> float:
        registry = self.apps[service].state.service.metrics.registry
        return registry.get_sample_value("shoploop_events_consumed_total", {"consumer": group}) or 0.0

    def erasure_subscriptions(self) -> dict[str, Any]:
        """Each service's consumer of erasure requests."""
        return {service: next(s for s in app.state.service.subscriptions if s.group == privacy_group(service))
                for service, app in self.apps.items()}

    def pending_persons(self) -> float:
        registry = self.apps["segmentation"].state.service.metrics.registry
        return registry.get_sample_value("shoploop_segment_pending_persons") or 0.0


@pytest.fixture
def stack_common(common_settings) -> CommonSettings:
    # A shorter group session than the shared fixture's: five groups join on tansu before the test starts.
    kafka = common_settings.kafka.model_copy(update={"session_timeout_ms": 1500, "heartbeat_interval_ms": 150})
    return common_settings.model_copy(update={"kafka": kafka})


@pytest.fixture
async def stack(stack_common, databases) -> AsyncIterator[Stack]:
    apps = {
        "ingest": create_ingest_app(IngestSettings(database_url=databases["ingest"], common=stack_common)),
        "funnel": create_funnel_app(FunnelSettings(database_url=databases["funnel"], common=stack_common)),
        # Everyone re-evaluated every half second: a full evaluation after the erasure must not bring them back.
        "segmentation": create_segmentation_app(SegmentationSettings(
            database_url=databases["segmentation"], common=stack_common,
            membership=MembershipSettings(evaluation_interval_seconds=0.5))),
    }
    async with AsyncExitStack() as stack:
        clients = {}
        for name, app in apps.items():
            base_url = await stack.enter_async_context(serve_app(app))
            clients[name] = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=30))
        yield Stack(apps=apps, **clients)


# ---------------------------------------------------------------------------------------------- the test

async def test_erasure_leaves_no_personal_data_in_any_services_tables(stack, databases):
    erased, kept = Person.new("erase-me", "李雷"), Person.new("keep-me", "韩梅梅")
    # The kept person buys once, earliest and least: their RFM scores are the lowest with or without the
    # erased person, so their stored membership has no reason to change.
    events = history(erased, orders=[(5, "500.00"), (2, "300.00")]) + history(kept, orders=[(10, "100.00")])
    response = await stack.ingest.post("/v1/events", json={"events": events}, headers=INGEST)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": len(events), "rejected": [], "ignored": []}
    for person in (erased, kept):
        response = await stack.ingest.post("/v1/identify", json=identify(person), headers=INGEST)
        assert response.json() == {"accepted": 1, "rejected": [], "ignored": []}, response.text
    total = len(events) + 2
    response = await stack.ingest.post("/v1/events", json={"events": [rejected(erased), rejected(kept)]},
                                       headers=INGEST)
    assert [item["index"] for item in response.json()["rejected"]] == [0, 1], response.text
    await eventually(lambda: stack.consumed("ingest", INGEST_REJECTED) >= 2, what="ingest to keep both rejections")

    await eventually(lambda: stack.consumed("funnel", FUNNEL_EVENTS) >= total, what="the funnel to apply every event")
    await eventually(lambda: stack.consumed("segmentation", SEGMENTATION_EVENTS) >= total,
                     what="segmentation to apply every event")

    async def membership_settled() -> bool:
        # Both persons' membership stored and its change records published (the outbox drained).
        rows = await every_row(databases["segmentation"])
        [outbox] = [table_rows for table, table_rows in rows.items() if table.endswith(f".{membership_changes.name}")]
        return stack.pending_persons() == 0 and not outbox and len(rows_naming(rows, [kept.key])) > 0

    await eventually(membership_settled, what="segment membership stored and published")

    span = {"from": _at(30), "to": format_timestamp(NOW), "as_of": format_timestamp(NOW)}
    aggregates = {path: await _get(stack.funnel, path, **span)
                  for path in ("/v1/kpis", "/v1/funnels/default/result", "/v1/channels")}
    kpis = aggregates["/v1/kpis"]
    assert (kpis["uv"], kpis["buyers"], kpis["orders"], kpis["gmv"]) == (2, 2, 3, 900.0)
    kept_profile = await _get(stack.segmentation, f"/v1/customers/{kept.key}")
    assert kept_profile["traits"] == kept.traits and kept_profile["orders"] == 1
    assert (await _get(stack.segmentation, f"/v1/customers/{erased.key}"))["orders"] == 2

    before = {service: await every_row(url) for service, url in databases.items()}
    # The sweep sees what it looks for: the erased person's key in both consuming services, and every trait
    # value (Chinese name included) where the traits are kept.
    assert rows_naming(before["funnel"], forms(erased.key))
    assert rows_naming(before["ingest"], forms(erased.key))
    assert rows_naming(before["segmentation"], forms(erased.key))
    for value in erased.traits.values():
        assert rows_naming(before["segmentation"], forms(value)), value
    kept_before = {service: rows_naming(rows, kept.needles()) for service, rows in before.items()}

    response = await stack.segmentation.delete(f"/v1/customers/{erased.key}", headers=ADMIN)
    assert response.status_code == 202, response.text
    await eventually(lambda: stack.consumed("segmentation", privacy_group("segmentation")) >= 1,
                     what="segmentation to apply the erasure request")
    await eventually(lambda: stack.consumed("funnel", privacy_group("funnel")) >= 1,
                     what="the funnel to apply the erasure request")
    await eventually(lambda: stack.consumed("ingest", privacy_group("ingest")) >= 1,
                     what="ingest to apply the erasure request")
    # Let a full membership evaluation run after the erasure (it must not store the person again).
    registry = stack.apps["segmentation"].state.service.metrics.registry

    def rounds_of_everyone() -> float:
        return registry.get_sample_value("shoploop_segment_evaluation_seconds_count", {"scope": "all"}) or 0

    rounds = rounds_of_everyone()
    await eventually(lambda: rounds_of_everyone() > rounds,
                     what="a full membership evaluation after the erasure")
    await eventually(membership_settled, what="segment membership settled after the erasure")

    after = {service: await every_row(url) for service, url in databases.items()}
    assert all(set(after[service]) == set(before[service]) for service in SERVICES)
    for service, rows in after.items():
        left = rows_naming(rows, erased.needles())
        assert not left, f"{service} still holds the erased person's data: {left}"
        assert rows_naming(rows, kept.needles()) == kept_before[service], f"{service} changed the kept person's rows"
    assert kept_before["ingest"] and kept_before["funnel"] and kept_before["segmentation"]

    gone = await stack.segmentation.get(f"/v1/customers/{erased.key}", headers=READ)
    assert gone.status_code == 404, gone.text
    assert _figures(await _get(stack.segmentation, f"/v1/customers/{kept.key}")) == _figures(kept_profile)
    assert {path: await _get(stack.funnel, path, **span) for path in aggregates} == aggregates
    if make_url(databases["funnel"]).get_backend_name() == "postgresql":
        # Dead row versions of the erased rows are vacuumed away after the erasure (docs/operations.md).
        for service, subscription in stack.erasure_subscriptions().items():
            vacuumed = await last_vacuums(databases[service], subscription.erases_from)
            assert set(vacuumed) == set(subscription.erases_from) and all(vacuumed.values()), (service, vacuumed)


async def last_vacuums(url: str, tables: Iterable[str]) -> dict[str, Any]:
    """When each table was last vacuumed by hand (None: never), from PostgreSQL's statistics."""
    parsed = make_url(url)
    connection = await asyncpg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                                       database=parsed.database)
    try:
        rows = await connection.fetch("SELECT relname, last_vacuum FROM pg_stat_user_tables "
                                      "WHERE relname = ANY($1::text[])", list(tables))
        return {row["relname"]: row["last_vacuum"] for row in rows}
    finally:
        await connection.close()


def _figures(profile: dict[str, Any]) -> dict[str, Any]:
    """A profile without the moment it was computed at."""
    return {name: value for name, value in profile.items() if name != "as_of"}


async def _get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=READ)
    assert response.status_code == 200, response.text
    return response.json()
