"""Helpers the tests share: waiting on conditions, serving an app on a free port, reading topics."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import FastAPI
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from libs.common.broker import free_port
from libs.common.db import Database

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T] | T], *, deadline_seconds: float = 20.0,
                     interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``probe`` (sync or async) until it returns a truthy value; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what}; last value: {last!r}")


@asynccontextmanager
async def serve_app(app: FastAPI, *, ready_path: str = "/readyz") -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free port; yield its base URL once ``ready_path`` answers 200."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url) as client:

            async def ready() -> bool:
                if task.done():
                    task.result()  # surface a startup crash instead of waiting out the deadline
                try:
                    return (await client.get(ready_path)).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, deadline_seconds=30, what=f"{ready_path} to answer 200")
        yield base_url
    finally:
        server.should_exit = True
        await task


async def read_topic(bootstrap_servers: str, topic: str, *, count: int,
                     deadline_seconds: float = 15.0) -> list[ConsumerRecord]:
    """Read every partition of ``topic`` from the start until ``count`` records arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = await eventually(lambda: consumer.partitions_for_topic(topic), what=f"metadata of {topic}")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + deadline_seconds
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def write_older_schema(database_url: str, build: Callable[[Connection], None]) -> None:
    """A database as an older version left it, for migration tests: created with the runtime's own tables,
    then ``build`` (on a sync connection, in one transaction) writes the old tables and rows."""
    empty = Database(database_url, metadata=MetaData(), migrations=[])
    await empty.start()
    try:
        async with empty.begin() as connection:
            await connection.run_sync(build)
    finally:
        await empty.close()


ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def embedded_stack(directory: Path, *, deadline_seconds: float = 90.0) -> Iterator[dict[str, str]]:
    """The stack as ``make run`` starts it (``python -m deploy.embedded``) on free ports, data under
    ``directory``; yields the URLs by name (``broker``, ``gateway``, ``funnel``...) once every service is
    ready, and ``logs``, the directory of their logs; stops it with Ctrl-C afterwards. ``SHOPLOOP_*`` settings of the caller are not passed on."""
    state = directory / "state.json"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SHOPLOOP_")}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "deploy.embedded", "--free-ports", "--data-dir", str(directory / "data"),
         "--state-file", str(state)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + deadline_seconds
        while not state.exists():
            if launcher.poll() is not None:
                raise AssertionError(f"the stack exited: {launcher.stdout.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError(f"the stack was not ready within {deadline_seconds:.0f}s")
            time.sleep(0.1)
        yield {**json.loads(state.read_text()), "logs": str(directory / "data" / "logs")}
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.communicate()
