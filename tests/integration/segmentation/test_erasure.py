"""Erasure (SPEC.md "Customers"): DELETE publishes a request on shoploop.privacy.v1; consuming it removes
every row naming the person, and the profile answers 404 afterwards."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from sqlalchemy import func, select

from libs.common.events import parse_rfc3339
from libs.common.kafka import PRIVACY_TOPIC
from services.segmentation.adapters.tables import PERSONAL_TABLES
from tests.integration.segmentation.conftest import ADMIN, READ, event, order
from tests.support import eventually, read_topic

T = datetime(2025, 12, 1, tzinfo=UTC)


def history(person: str, prefix: str) -> list:
    return [
        event("view", person, T, f"{prefix}-1", channel={"source": "douyin"}),
        event("identify", person, T, f"{prefix}-2", traits={"email": f"{person}@example.com", "phone": "138"}),
        event("inquiry", person, T, f"{prefix}-3", inquiry={"inquiry_id": f"{prefix}-q"}),
        order(person, T, f"{prefix}-4", f"{prefix}-o", "300.00"),
        order(person, T, f"{prefix}-5", f"{prefix}-o", status="refunded"),
    ]


async def rows_naming(segmentation, person: str) -> dict[str, int]:
    async with segmentation.service.database.read() as connection:
        return {
            table.name: (await connection.execute(
                select(func.count()).select_from(table).where(table.c.person_key == person)
            )).scalar_one()
            for table in PERSONAL_TABLES
        }


async def test_erasure_removes_every_row_of_the_person_and_only_theirs(segmentation, broker):
    await segmentation.send(history("u-erase", "a") + history("u-keep", "b"))
    await segmentation.wait_processed(10)

    async def settled() -> bool:
        erase, keep = await rows_naming(segmentation, "u-erase"), await rows_naming(segmentation, "u-keep")
        # Published: nothing of either person left in the outbox (today's, and an older version's).
        return erase["customer_segments"] == keep["customer_segments"] == 1 and not any(
            rows[outbox] for rows in (erase, keep) for outbox in ("membership_changes", "segment_changes"))

    await eventually(settled, what="both persons' membership stored and published")
    before = await rows_naming(segmentation, "u-keep")

    forbidden = await segmentation.client.delete("/v1/customers/u-erase", headers=READ)
    assert forbidden.status_code == 403
    response = await segmentation.client.delete("/v1/customers/u-erase", headers=ADMIN)
    assert response.status_code == 202, response.text
    accepted = response.json()

    [request] = await read_topic(broker.bootstrap_servers, PRIVACY_TOPIC, count=1)
    assert request.key == b"u-erase"
    published = orjson.loads(request.value)
    assert published == accepted
    assert set(published) == {"person_key", "requested_at", "request_id"}
    assert parse_rfc3339(published["requested_at"]) == segmentation.clock.now

    async def gone() -> bool:
        answer = await segmentation.client.get("/v1/customers/u-erase", headers=READ)
        return answer.status_code == 404

    await eventually(gone, what="u-erase to answer 404")
    assert set((await rows_naming(segmentation, "u-erase")).values()) == {0}
    assert await rows_naming(segmentation, "u-keep") == before
    assert (await segmentation.client.get("/v1/customers/u-keep", headers=READ)).status_code == 200

    # Redelivered old events stay processed: they do not bring the person back.
    duplicates = segmentation.service.metrics.registry
    seen = duplicates.get_sample_value("shoploop_duplicate_events_total", {"consumer": "segmentation"}) or 0
    await segmentation.send(history("u-erase", "a"))
    await eventually(lambda: (duplicates.get_sample_value("shoploop_duplicate_events_total",
                                                          {"consumer": "segmentation"}) or 0) >= seen + 5,
                     what="the redelivered events to be skipped")
    assert set((await rows_naming(segmentation, "u-erase")).values()) == {0}


async def test_erasing_the_person_an_order_counted_for_lets_another_persons_event_of_it_count(segmentation):
    # The same order_id completed by two persons: it counts once, at the earliest event (u-first's).
    await segmentation.send([order("u-first", T, "d-1", "o-shared", "80.00"),
                             order("u-second", T.replace(hour=5), "d-2", "o-shared", "80.00")])
    await segmentation.wait_processed(2)
    at = {"as_of": "2026-01-01T00:00:00Z"}
    assert (await segmentation.get("/v1/customers/u-second", **at))["orders"] == 0

    response = await segmentation.client.delete("/v1/customers/u-first", headers=ADMIN)
    assert response.status_code == 202, response.text

    async def second_counts() -> bool:
        return (await segmentation.get("/v1/customers/u-second", **at))["orders"] == 1

    await eventually(second_counts, what="u-second's completed event to count the order")
