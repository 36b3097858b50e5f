"""The funnel service process: the common service plus the analytical copy of its facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.common.service import Service
from services.funnel.adapters.mirror import FactMirror
from services.funnel.settings import FunnelSettings


@dataclass
class FunnelService(Service):
    """The common service plus the DuckDB copy of the facts that the aggregate answers are computed on."""

    settings: FunnelSettings
    mirror: FactMirror = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        settings = self.settings
        self.mirror = FactMirror(self.database, load_wait_seconds=settings.fact_copy_wait_seconds,
                                 directory=settings.fact_copy_dir, memory_limit=settings.fact_copy_memory_limit,
                                 threads=settings.fact_copy_threads, time_zone=settings.common.timezone,
                                 load_memory_limit=settings.fact_copy_load_memory_limit,
                                 retry_memory_limit=settings.fact_copy_retry_memory_limit)

    async def start(self) -> None:
        await super().start()
        self.mirror.start(retry_max_seconds=self.settings.fact_copy_retry_max_seconds)

    async def stop(self) -> None:
        await self.mirror.stop()
        await super().stop()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready, body = await super().readiness()
        # Ready once the copy is loaded and its last sync succeeded: the state in which KPI and funnel
        # answers do not 503.
        state = self.mirror.state()
        body["checks"]["fact_copy"] = state
        ready = ready and state == "ok"
        body["status"] = "ready" if ready else "unready"
        return ready, body
