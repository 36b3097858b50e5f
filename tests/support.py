"""Helpers the tests share: waiting on conditions, serving an app on a free port, reading topics."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
