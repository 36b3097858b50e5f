"""The funnel service process: the common service plus the analytical copy of its facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.common.service import Service
from services.funnel.adapters.mirror import FactMirror


@dataclass
class FunnelService(Service):
    """The common service plus the DuckDB copy of the facts that the aggregate answers are computed on."""

    mirror: FactMirror = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mirror = FactMirror(self.database)

    async def start(self) -> None:
        await super().start()
        self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()
        await super().stop()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready, body = await super().readiness()
        loaded = self.mirror.loaded.is_set()
        body["checks"]["fact_copy"] = "ok" if loaded else f"loading ({self.mirror.rows} rows so far)"
        ready = ready and loaded
        body["status"] = "ready" if ready else "unready"
        return ready, body
