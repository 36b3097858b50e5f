"""SIGKILL of a replica mid-delivery, with a second replica running alongside and the killed one restarted: every
touch arrives under its one id, no person gets two touches or coupons, each redemption counts once, and both
replicas serve the same report (SQLite and PostgreSQL, real processes on one database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from sqlalchemy import func, select

from libs.common.broker import free_port, stop_process
from libs.common.db import Database
from libs.common.events import format_timestamp
from libs.common.kafka import EVENTS_TOPIC, SEGMENTS_TOPIC, Publisher
from services.campaigns.adapters.migrations import MIGRATIONS
from services.campaigns.adapters.tables import coupons, metadata, segment_members, touches
from tests.integration.campaigns.conftest import READ, WRITE, campaign_body, order
from tests.integration.campaigns.receiver import running_receiver
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[3]
PERSONS = 300


class Replica:
    def __init__(self, settings, log_path: Path) -> None:
        self.port = free_port()
        kafka = settings.common.kafka
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPLOOP_")} | {
            "SHOPLOOP_ENV": "local",
            "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "SHOPLOOP_KAFKA__TOPIC_PARTITIONS": str(kafka.topic_partitions),
            "SHOPLOOP_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "SHOPLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            "SHOPLOOP_CAMPAIGNS__DATABASE_URL": settings.database_url,
            "SHOPLOOP_CAMPAIGNS__PORT": str(self.port),
            "SHOPLOOP_CAMPAIGNS__SCHEDULER__POLL_SECONDS": "0.1",
            "SHOPLOOP_CAMPAIGNS__SCHEDULER__BATCH": "20",
            "SHOPLOOP_CAMPAIGNS__WEBHOOKS__CONCURRENCY": "4",
            "SHOPLOOP_CAMPAIGNS__WEBHOOKS__CLAIM_LEASE_SECONDS": "2",
            "SHOPLOOP_CAMPAIGNS__WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[0.1, 0.2, 0.5, 1, 1, 1, 1, 1, 1, 1]",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.campaigns"], cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)

        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, deadline_seconds=90, what="the replica to be ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace_seconds=30)


async def _count(database: Database, table, *where) -> int:
    async with database.read() as connection:
        return (await connection.execute(select(func.count()).select_from(table).where(*where))).scalar_one()


async def test_a_killed_replica_and_a_second_one_send_each_touch_once_and_agree_on_the_report(settings, tmp_path):
    database = Database(settings.database_url, metadata=metadata, migrations=MIGRATIONS)
    publisher = Publisher(settings.common.kafka, client_id="kill-test")
    first, second = Replica(settings, tmp_path / "first.log"), Replica(settings, tmp_path / "second.log")
    await publisher.start()
    try:
        async with running_receiver() as receiver:
            receiver.delay_seconds = 0.03  # slow answers: the kill lands while POSTs are in flight
            await first.start()
            await second.start()
            await database.start()
            persons = [f"k-{n:03d}" for n in range(PERSONS)]
            now = datetime.now(UTC)
            await publisher.publish_many(SEGMENTS_TOPIC, [(p.encode(), orjson.dumps({
                "change_id": uuid.uuid4().hex, "change": "entered", "segment_id": "rfm:champion",
                "segment_name": "rfm:champion", "segment_kind": "rfm", "person_key": p,
                "as_of": format_timestamp(now - timedelta(minutes=5))})) for p in persons])
            await eventually(lambda: _at_least(_count(database, segment_members), PERSONS), deadline_seconds=60, what="segment mirrored")
            async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
                body = campaign_body(receiver.url, audience={"kind": "segment_scheduled", "segment_id": "rfm:champion",
                                                             "send_at": format_timestamp(now)})
                created = (await client.post("/v1/campaigns", json=body, headers=WRITE)).json()
                campaign_id = created["campaign_id"]
                receiver.secrets[campaign_id] = created["webhook_secret"]
                assert (await client.post(f"/v1/campaigns/{campaign_id}/activate", headers=WRITE)).status_code == 200

            await eventually(lambda: len(receiver.delivered) >= 40, deadline_seconds=60, what="deliveries under way")
            first.kill()
            killed_at = len(receiver.delivered)
            treated = await _count(database, touches)
            assert killed_at < treated, "the kill came after every delivery: nothing tested"
            await first.start()

            await eventually(lambda: len(receiver.delivered) == treated, deadline_seconds=120,
                             what="every touch delivered")
            await eventually(lambda: _at_least(_count(database, touches, touches.c.status == "delivered"), treated),
                             deadline_seconds=60, what="every delivery recorded")
            assert receiver.bad_signatures == []
            received = receiver.touches
            # One touch id per person, one touch and one coupon per person, codes all different.
            assert len({t["person_key"] for t in received.values()}) == len(received) == treated
            assert await _count(database, coupons) == treated
            async with database.read() as connection:
                codes = list((await connection.execute(select(touches.c.person_key, touches.c.coupon_code))).all())
            assert len({code for _, code in codes}) == treated
            for webhook_id, payloads in receiver.delivered.items():
                assert len({orjson.dumps(p) for p in payloads}) == 1, webhook_id  # a resend is the same message

            # Orders with the codes, each sent twice (at-least-once), consumed by whichever replica owns the partition.
            buyers = sorted(received.values(), key=lambda t: t["person_key"])[:20]
            orders = [order(t["person_key"], datetime.now(UTC) - timedelta(seconds=30), f"ko-{n}", f"ko-{n}",
                            "150.00", coupon_code=t["coupon_code"], discount="30.00") for n, t in enumerate(buyers)]
            records = [(o.person_key.encode(), o.to_json()) for o in orders]
            await publisher.publish_many(EVENTS_TOPIC, records + records)
            as_of = format_timestamp(datetime.now(UTC) + timedelta(minutes=1))

            async def reports() -> list[dict]:
                answers = []
                async with httpx.AsyncClient(timeout=30) as client:
                    for replica in (first, second):
                        response = await client.get(f"{replica.url}/v1/campaigns/{campaign_id}/report",
                                                    params={"as_of": as_of}, headers=READ)
                        answers.append(response.json())
                return answers if answers[0]["variants"]["coupon"]["redemptions"] == len(buyers) else []

            first_report, second_report = await eventually(reports, deadline_seconds=60, what="every redemption counted")
            assert first_report == second_report
            coupon = first_report["variants"]["coupon"]
            assert coupon["touched"] == treated and coupon["discount_cost"] == 30.0 * len(buyers)
            assert sum(arm["assigned"] for arm in first_report["variants"].values()) == PERSONS
            statuses = Counter(t["status"] for t in await _touch_list(second.url, campaign_id))
            assert statuses == {"delivered": treated}
    finally:
        first.stop()
        second.stop()
        await publisher.stop()
        await database.close()


async def _at_least(count, minimum: int) -> bool:
    return await count >= minimum


async def _touch_list(url: str, campaign_id: str) -> list[dict]:
    items, cursor = [], None
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            params = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(f"/v1/campaigns/{campaign_id}/touches", params=params, headers=READ)).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

