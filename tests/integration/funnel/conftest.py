from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from libs.common.kafka import EVENTS_TOPIC, PRIVACY_TOPIC, Publisher, ensure_topics
from libs.common.settings import CommonSettings
from services.funnel.settings import FunnelSettings
from tests.integration.funnel.helpers import Funnel, running_funnel


@pytest.fixture
def funnel_common(common_settings) -> CommonSettings:
    # A shorter session than the shared fixture's: joining the group costs about one session timeout on tansu,
    # and the funnel joins two groups per start.
    kafka = common_settings.kafka.model_copy(update={"session_timeout_ms": 1000, "heartbeat_interval_ms": 100})
    return common_settings.model_copy(update={"kafka": kafka})


@pytest.fixture
def settings(funnel_common, database_url, tmp_path) -> FunnelSettings:
    # The copy on disk, as deployed (make run, compose): every route test exercises the file-backed copy.
    return FunnelSettings(database_url=database_url, common=funnel_common, max_page_size=50,
                          fact_copy_dir=str(tmp_path / "copy"))


@pytest.fixture
async def publisher(funnel_common) -> AsyncIterator[Publisher]:
    await ensure_topics(funnel_common.kafka, [EVENTS_TOPIC, PRIVACY_TOPIC])
    publisher = Publisher(funnel_common.kafka, client_id="funnel-test")
    await publisher.start()
    yield publisher
    await publisher.stop()


@pytest.fixture
async def funnel(settings) -> AsyncIterator[Funnel]:
    async with running_funnel(settings) as running:
        yield running
