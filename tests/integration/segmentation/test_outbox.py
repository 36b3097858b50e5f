"""The outbox of membership changes: one row per person and evaluation, its records rendered when published. A
publish that fails after the broker may have taken the records leaves the rows, and the next attempt sends the same
records under the same change ids; records an older version queued as payloads go out first. SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import func, select

from libs.common.db import Database
from libs.common.kafka import SEGMENTS_TOPIC
from services.segmentation.adapters.tables import membership_changes, segment_changes
from services.segmentation.decoding import decode_event
from services.segmentation.handlers import record_customer_facts
from services.segmentation.membership import publish_queued_changes, sync_membership
from services.segmentation.population import Thresholds
from tests.integration.segmentation.conftest import event, order

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


class RecordingPublisher:
    """Takes every record it is given; ``fail_after`` publishes raises once the records are taken (a broker that
    acknowledged, a process that died before deleting the rows)."""

    def __init__(self, fail_after: int = -1) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.fail_after = fail_after

    async def publish_many(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        assert topic == SEGMENTS_TOPIC
        self.records += records
        if self.fail_after == 0:
            raise ConnectionError("gone after the acknowledgement")
        self.fail_after -= 1


async def _queued(database: Database) -> tuple[int, int]:
    async with database.read() as connection:
        return ((await connection.execute(select(func.count()).select_from(membership_changes))).scalar_one(),
                (await connection.execute(select(func.count()).select_from(segment_changes))).scalar_one())


async def test_a_resend_after_a_failed_publish_carries_the_same_change_ids(database):
    facts = [order(f"u-{n}", AS_OF - timedelta(days=n), f"e-{n}", f"o-{n}") for n in range(5)]
    facts.append(event("view", "u-viewer", AS_OF - timedelta(days=1), "e-v"))
    async with database.begin() as connection:
        await record_customer_facts(connection, [decode_event(e.to_json()) for e in facts])
        assert (await sync_membership(connection, AS_OF, Thresholds())) == (6, 6)
    assert await _queued(database) == (6, 0)

    failing = RecordingPublisher(fail_after=0)
    with pytest.raises(ConnectionError):
        await publish_queued_changes(database, failing, batch=2)  # type: ignore[arg-type]
    assert await _queued(database) == (6, 0)
    working = RecordingPublisher()
    published = await publish_queued_changes(database, working, batch=2)  # type: ignore[arg-type]

    assert await _queued(database) == (0, 0)
    assert working.records[:len(failing.records)] == failing.records  # the same records, ids included
    sent = [orjson.loads(payload) for _, payload in working.records]
    # Each person enters a lifecycle stage; the five buyers an RFM segment and a tier too.
    assert len(sent) == published == 1 + 5 * 3 == len({record["change_id"] for record in sent})
    assert {record["person_key"] for record in sent} == {f"u-{n}" for n in range(5)} | {"u-viewer"}
    assert all(key == record["person_key"].encode() for (key, _), record in zip(working.records, sent, strict=True))
    assert {record["as_of"] for record in sent} == {"2026-01-01T00:00:00.000000Z"}


async def test_records_an_older_version_queued_go_out_first(database):
    legacy = {"change_id": "legacy-1", "change": "entered", "segment_id": "lifecycle:prospect",
              "segment_name": "lifecycle:prospect", "segment_kind": "lifecycle", "person_key": "u-old",
              "as_of": "2025-12-31T00:00:00.000000Z"}
    async with database.begin() as connection:
        await connection.execute(segment_changes.insert().values(change_id="legacy-1", person_key="u-old",
                                                                 payload=orjson.dumps(legacy).decode()))
        await record_customer_facts(connection, [decode_event(
            event("view", "u-new", AS_OF - timedelta(days=1), "e-1").to_json())])
        await sync_membership(connection, AS_OF, Thresholds())

    publisher = RecordingPublisher()
    assert await publish_queued_changes(database, publisher, batch=10) == 2  # type: ignore[arg-type]

    assert [orjson.loads(payload)["person_key"] for _, payload in publisher.records] == ["u-old", "u-new"]
    assert orjson.loads(publisher.records[0][1]) == legacy
    assert await _queued(database) == (0, 0)
