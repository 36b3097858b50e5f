"""Erasure reaches the disk (issue 9): after DELETE /v1/customers/{id} and a clean stop of the stack as `make run`
runs it, no file under the stack's data directory (databases, their -wal/-shm files, logs) holds the person's
key, email or Chinese name, in any form they were sent in, while the other person's data is still there."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from libs.common.events import format_timestamp
from tests.e2e.stack import EmbeddedStack
from tests.support import eventually

INGEST = {"Authorization": "Bearer dev-ingest-key"}
READ = {"Authorization": "Bearer dev-read-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
WHEN = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


class Person:
    def __init__(self, label: str, name: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.key = f"{label}-{tag}"
        self.email = f"{label}.{tag}@example.com"
        self.name = f"{name}{tag}"

    def needles(self) -> dict[str, bytes]:
        """Each value as UTF-8 and as JSON with \\uXXXX escapes (lower-cased: files are compared lower-cased)."""
        found = {}
        for value in (self.key, self.email, self.name):
            found[value] = value.casefold().encode()
            found[f"{value} (escaped)"] = json.dumps(value)[1:-1].casefold().encode()
        return found

    def events(self) -> list[dict]:
        at = format_timestamp(WHEN)
        product = {"product_id": "sku-dress", "name": "真丝连衣裙", "category": "dresses", "price": 399}
        return [
            {"type": "view", "user_id": self.key, "occurred_at": at, "product": product,
             "properties": {"contact": self.email, "name": self.name}},
            {"type": "order", "user_id": self.key, "occurred_at": at, "properties": {"contact": self.email},
             "order": {"order_id": f"o-{uuid.uuid4().hex}", "status": "completed", "total": 399,
                       "items": [{"product_id": "sku-dress", "quantity": 1, "unit_price": 399}]}},
        ]

    def segment_batch(self) -> dict:
        at = format_timestamp(WHEN)
        return {"batch": [
            {"type": "identify", "userId": self.key, "timestamp": at, "messageId": f"m-{uuid.uuid4().hex}",
             "traits": {"email": self.email, "name": self.name}},
            {"type": "track", "event": "Order Completed", "userId": self.key, "timestamp": at,
             "messageId": f"m-{uuid.uuid4().hex}", "context": {"traits": {"email": self.email}},
             "properties": {"order_id": f"o-{uuid.uuid4().hex}", "total": 199,
                            "products": [{"product_id": "sku-1", "quantity": 1, "price": 199}]}},
        ]}

    def track(self) -> dict:
        return {"userId": self.key, "event": "Product Viewed", "timestamp": format_timestamp(WHEN),
                "messageId": f"m-{uuid.uuid4().hex}", "context": {"traits": {"email": self.email, "name": self.name}},
                "properties": {"product_id": "sku-2", "name": "羊绒围巾"}}

    def identify(self) -> dict:
        return {"userId": self.key, "timestamp": format_timestamp(WHEN), "traits": {"email": self.email,
                                                                                 "name": self.name}}

    def rejected(self) -> dict:
        """Rejected for its timestamp, not its ids: ingest keeps it, raw body and all, for replay."""
        return {"type": "view", "user_id": self.key, "occurred_at": "yesterday", "product": {"product_id": "sku-1"},
                "properties": {"contact": self.email, "name": self.name}}


def files_holding(data_dir: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Per needle, the files under ``data_dir`` whose bytes (lower-cased) contain it."""
    contents = {str(path.relative_to(data_dir)): path.read_bytes().lower()
                for path in sorted(data_dir.rglob("*")) if path.is_file()}
    return {label: [name for name, content in contents.items() if needle in content]
            for label, needle in needles.items()
            if any(needle in content for content in contents.values())}


def warnings_in(logs: Path) -> list[str]:
    """The services' log lines at warning level or above (their logs are JSON lines)."""
    return [f"{path.name}: {line}" for path in sorted(logs.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if '"level":"warning"' in line or '"level":"error"' in line or '"level":"critical"' in line]


async def test_an_erased_person_is_in_no_file_of_the_stack_after_a_clean_stop(tmp_path):
    erased, kept = Person("erase-me", "李雷"), Person("keep-me", "韩梅梅")
    data_dir = tmp_path / "data"
    stack = EmbeddedStack(data_dir)
    try:
        urls = await stack.start()
        async with httpx.AsyncClient(timeout=30) as client:
            for person in (erased, kept):
                posted = [
                    await client.post(f"{urls['ingest']}/v1/events", json={"events": person.events()},
                                      headers=INGEST),
                    await client.post(f"{urls['ingest']}/v1/batch", json=person.segment_batch(), headers=INGEST),
                    await client.post(f"{urls['ingest']}/v1/identify", json=person.identify(), headers=INGEST),
                    await client.post(f"{urls['ingest']}/v1/track", json=person.track(), headers=INGEST),
                ]
                assert [response.json()["accepted"] for response in posted] == [2, 2, 1, 1], [r.text for r in posted]
                rejected = await client.post(f"{urls['ingest']}/v1/events", json=person.rejected(), headers=INGEST)
                assert rejected.json()["rejected"], rejected.text

            async def applied_everywhere() -> bool:
                profiles = [await client.get(f"{urls['segmentation']}/v1/customers/{p.key}", headers=READ)
                            for p in (erased, kept)]
                listed = (await client.get(f"{urls['ingest']}/v1/rejected", params={"limit": 10},
                                           headers=ADMIN)).json()["items"]
                span = {"from": format_timestamp(WHEN - timedelta(days=1)),
                        "to": format_timestamp(WHEN + timedelta(days=1))}
                kpis = (await client.get(f"{urls['funnel']}/v1/kpis", params=span, headers=READ)).json()
                # Campaigns keeps orders for attribution: it too must have read them before the erasure, since
                # nothing orders the events topic against the privacy topic.
                campaigns = (await client.get(f"{urls['campaigns']}/readyz")).json()["consumers"]["campaigns"]
                return (campaigns["lag"] == 0 and campaigns["last_processed_at"] is not None and all(p.status_code == 200 and p.json()["orders"] == 2
                            and p.json()["traits"].get("name") for p in profiles)
                        and len(listed) == 2 and kpis.get("orders") == 4 and kpis.get("pv") == 4)

            await eventually(applied_everywhere, deadline_seconds=60, what="every service to apply every event")
            # The search finds what it looks for: before the erasure every value is on disk somewhere.
            assert set(files_holding(data_dir, erased.needles())) >= {erased.key, erased.email, erased.name}

            response = await client.delete(f"{urls['segmentation']}/v1/customers/{erased.key}", headers=ADMIN)
            assert response.status_code == 202, response.text
        stack.interrupt()  # the drain waits until every service has applied the erasure request
        assert stack.wait() == 0, stack.output
    finally:
        stack.kill()

    # (On failure, the services' warnings say why: e.g. a WAL checkpoint that found readers at close.)
    assert files_holding(data_dir, erased.needles()) == {}, warnings_in(data_dir / "logs")
    assert set(files_holding(data_dir, kept.needles())) >= {kept.key, kept.email, kept.name}
