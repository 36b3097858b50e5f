"""A funnel service killed with SIGKILL mid-stream and restarted, or run as two replicas of one consumer group,
ends with exactly the numbers of an uninterrupted run (SPEC.md "Topics and delivery")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from libs.common.broker import free_port
from libs.common.db import Database
from libs.common.events import format_timestamp
from services.funnel.adapters.tables import MIGRATIONS, events, metadata
from services.funnel.domain.funnels import DEFAULT_FUNNEL
from tests.integration.funnel import expected
from tests.integration.funnel.helpers import READ, consumed, facts, publish, running_funnel, shop_stream
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[3]
START = datetime(2026, 2, 1, tzinfo=UTC)
END = START + timedelta(days=10)
AS_OF = START + timedelta(days=12)
SPAN = {"from": "2026-02-01", "to": "2026-02-11", "as_of": format_timestamp(AS_OF)}


def uninterrupted(sent: list) -> dict[str, Any]:
    """What a run that never stopped answers: the domain over every event, each event_id once."""
    known = facts(sent)
    return {
        "kpis": expected.kpis(known, START, END, AS_OF, "UTC"),
        "funnel": expected.funnel(known, DEFAULT_FUNNEL, START, END, AS_OF, "source"),
        "channels": expected.channels(known, START, END, AS_OF),
    }


async def assert_answers(client: httpx.AsyncClient, want: dict[str, Any]) -> None:
    async def get(path: str, **params: Any) -> Any:
        response = await client.get(path, params={**SPAN, **params})
        assert response.status_code == 200, response.text
        return response.json()

    kpis = await get("/v1/kpis", granularity="day")
    assert expected.subset(kpis, want["kpis"]) == want["kpis"]
    funnel = await get("/v1/funnels/default/result", breakdown="source")
    assert expected.subset(funnel, want["funnel"]) == want["funnel"]
    assert (await get("/v1/channels"))["items"] == want["channels"]


class ServiceProcess:
    """`python -m services.funnel` as operators run it, configured through the environment."""

    def __init__(self, database_url: str, bootstrap_servers: str, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ, "PYTHONPATH": str(ROOT), "SHOPLOOP_ENV": "local", "SHOPLOOP_LOG_LEVEL": "WARNING",
            "SHOPLOOP_FUNNEL__DATABASE_URL": database_url, "SHOPLOOP_FUNNEL__PORT": str(self.port),
            "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers, "SHOPLOOP_KAFKA__TOPIC_PARTITIONS": "4",
            "SHOPLOOP_KAFKA__SESSION_TIMEOUT_MS": "1000", "SHOPLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": "100",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.funnel"], cwd=ROOT, env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        async with httpx.AsyncClient(base_url=self.url) as client:
            async def ready() -> bool:
                assert self.process.poll() is None, f"the service exited; see {self.log_path}"
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, deadline_seconds=30, what="the funnel process to be ready")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def service_process(database_url, funnel_common, tmp_path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(database_url, funnel_common.kafka.bootstrap_servers, tmp_path / "funnel.log")
    yield process
    process.stop()


async def stored_events(database_url: str) -> int:
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    try:
        async with database.read() as connection:
            return (await connection.execute(select(func.count()).select_from(events))).scalar_one()
    finally:
        await database.close()


async def test_sigkill_mid_stream_then_restart_ends_with_the_uninterrupted_numbers(
    service_process, publisher, database_url
):
    sent = shop_stream(3000, seed=11, start=START)
    distinct = len({event.event_id for event in sent})
    first, second, rest = sent[:1000], sent[1000:2000], sent[2000:]
    await service_process.start()
    await publish(publisher, first)
    await eventually(lambda: stored_events(database_url), what="the first events stored")
    await publish(publisher, second)
    service_process.kill()  # while it works through the stream
    at_kill = await stored_events(database_url)
    await publish(publisher, rest)
    assert 0 < at_kill < distinct

    await service_process.start()

    async def caught_up() -> bool:
        return await stored_events(database_url) == distinct

    await eventually(caught_up, deadline_seconds=60, what=f"all {distinct} events stored after the restart")
    async with httpx.AsyncClient(base_url=service_process.url, headers=READ, timeout=30) as client:
        await assert_answers(client, uninterrupted(sent))


async def test_two_replicas_in_one_group_end_with_the_uninterrupted_numbers(settings, publisher, database_url):
    sent = shop_stream(1000, seed=5, start=START)
    distinct = len({event.event_id for event in sent})
    async with running_funnel(settings) as one, running_funnel(settings) as other:
        await publish(publisher, sent)

        async def caught_up() -> bool:
            return await stored_events(database_url) == distinct

        await eventually(caught_up, deadline_seconds=60, what=f"all {distinct} events stored by the replicas")
        assert consumed(one.app) > 0 and consumed(other.app) > 0  # both took part
        want = uninterrupted(sent)
        for replica in (one, other):
            await assert_answers(replica.client, want)
