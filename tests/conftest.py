"""Fixtures: a fresh tansu broker per test (it starts in milliseconds), and each storage test once on
SQLite and once on PostgreSQL. Without a reachable PostgreSQL the PostgreSQL runs skip with the reason,
except under CI (``CI=true``), where they fail: CI must never skip them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from libs.common.broker import EmbeddedBroker
from libs.common.settings import CommonSettings

# Hypothesis's per-example deadline measures the machine, not the behaviour: on two shared cores a slow
# example is not a failure (the brief's speed targets are measured by bench/, not by tests).
hypothesis_settings.register_profile("shoploop", deadline=None)
hypothesis_settings.load_profile("shoploop")

POSTGRES_DSN = os.environ.get("SHOPLOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_unavailable_reason() -> str | None:
    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_DSN} is unreachable ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def postgres_unavailable() -> str | None:
    reason = _postgres_unavailable_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests (start it before make test)")
    return reason


@pytest.fixture
def broker(tmp_path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    embedded.start()
    asyncio.run(embedded.wait_ready())
    yield embedded
    embedded.stop()


@pytest.fixture
def common_settings(broker: EmbeddedBroker) -> CommonSettings:
    kafka = broker.kafka_settings(topic_partitions=4)
    return CommonSettings(env="local", kafka=kafka)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path, postgres_unavailable) -> AsyncIterator[str]:
    """A new, empty database: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
        return
    if postgres_unavailable:
        pytest.skip(postgres_unavailable)
    name = f"shoploop_test_{uuid.uuid4().hex[:12]}"
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
