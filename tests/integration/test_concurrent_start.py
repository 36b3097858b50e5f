"""Start-up is idempotent under any number of processes starting at once (issue 9): several replicas of every
service start together against PostgreSQL databases that do not exist yet and a broker without topics,
several times over, and every one of them reaches /readyz 200. Races covered: CREATE DATABASE, schema migrations,
topic creation, consumer group joins."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from libs.common.broker import EmbeddedBroker
from tests.conftest import POSTGRES_DSN
from tests.integration.starting_process import APPS

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3  # per service; the tests' topics have 4 partitions, so each replica is assigned some
# Each round is 15 processes racing on fresh databases and topics (about 8 s); more rounds find a rarer race,
# e.g. `START_ROUNDS=50` before changing start-up code. The suite runs 4 to stay within its time.
ROUNDS = int(os.environ.get("START_ROUNDS", "4"))


async def _spawn(service: str, log_path: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPLOOP_")} | {"SHOPLOOP_LOG_LEVEL": "WARNING"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.starting_process", service, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=open(log_path, "ab"),
    )


async def _answer(process: asyncio.subprocess.Process, deadline_seconds: float, log_path: Path) -> dict:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), deadline_seconds)
    if not line:
        status = await process.wait()
        output = await asyncio.to_thread(log_path.read_text)
        raise AssertionError(f"replica exited with status {status}: {output[-4000:]}")
    return orjson.loads(line)


async def _drop(names: list[str]) -> None:
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_every_replica_of_every_service_starts_when_all_start_at_once_on_fresh_databases(
        tmp_path, postgres_unavailable):
    if postgres_unavailable:
        pytest.skip(postgres_unavailable)
    logs = [tmp_path / f"{service}-{n}.log" for service in APPS for n in range(REPLICAS)]
    replicas = [(service, await _spawn(service, log)) for service, log in zip(
        [service for service in APPS for _ in range(REPLICAS)], logs, strict=True)]
    try:
        for (_, process), log in zip(replicas, logs, strict=True):
            assert "hello" in await _answer(process, 60, log)  # imported: from here on only the start is timed
        for round_number in range(ROUNDS):
            broker = EmbeddedBroker(log_path=tmp_path / f"broker-{round_number}.log")
            broker.start()
            names = {service: f"shoploop_start_{uuid.uuid4().hex[:10]}_{service}" for service in APPS}
            try:
                await broker.wait_ready()
                for service, process in replicas:
                    assert process.stdin is not None
                    process.stdin.write(orjson.dumps({
                        "database_url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{names[service]}",
                        "bootstrap_servers": broker.bootstrap_servers,
                    }) + b"\n")
                answers = await asyncio.gather(*(_answer(process, 45, log)
                                                 for (_, process), log in zip(replicas, logs, strict=True)))
                failed = {f"{service} replica {n % REPLICAS}": answer["error"]
                          for n, ((service, _), answer) in enumerate(zip(replicas, answers, strict=True))
                          if not answer["ready"]}
                assert not failed, f"round {round_number}: {failed}"
            finally:
                broker.stop()
                await _drop(list(names.values()))
    finally:
        for _, process in replicas:
            if process.returncode is None:
                process.kill()
                await process.wait()
