"""The gateway process: no database and no consumers of its own, only the services behind it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from libs.common.service import VERSION, Service
from services.gateway.adapters.backends import Backends, BackendUnavailable
from services.gateway.settings import BACKENDS, GatewaySettings


@dataclass
class GatewayService(Service):
    settings: GatewaySettings
    # Tests put the services behind an in-memory transport; by default they are reached over HTTP.
    transport: httpx.AsyncBaseTransport | None = None
    backends: Backends = field(init=False)
    _started: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.backends = Backends(self.settings, transport=self.transport)

    async def start(self) -> None:
        await super().start()
        self._started = True

    async def stop(self) -> None:
        await self.backends.close()
        await super().stop()

    async def health(self) -> dict[str, Any]:
        """Every service's readiness body, read in parallel; one that does not answer is ``unreachable``."""
        services = await asyncio.gather(*(self._service_health(name) for name in BACKENDS))
        deployed = [entry for entry in services if entry["status"] != "not_deployed"]
        ready = bool(deployed) and all(entry["status"] == "ready" for entry in deployed)
        return {"status": "ready" if ready else "degraded", "gateway": {"version": VERSION}, "services": services}

    async def _service_health(self, name: str) -> dict[str, Any]:
        backend = self.backends.backends[name]
        if not backend.url:
            return {"service": name, "url": None, "status": "not_deployed", "reason": "no URL configured"}
        try:
            async with asyncio.timeout(self.settings.part_timeout_seconds):
                body = await self.backends.get_json(name, "/readyz", key=None, accept_status=frozenset({200, 503}),
                                                    within_seconds=self.settings.part_timeout_seconds)
        except BackendUnavailable as exc:
            return {"service": name, "url": backend.url, "status": "unreachable", "reason": exc.reason}
        except TimeoutError:
            return {"service": name, "url": backend.url, "status": "unreachable",
                    "reason": f"no answer within {self.settings.part_timeout_seconds:g} s"}
        checks = body.get("checks", {})
        entry = {
            "service": name, "url": backend.url, "status": body.get("status", "unready"),
            "version": body.get("version"), "checks": checks, "consumers": body.get("consumers", {}),
        }
        failing = {check: state for check, state in checks.items() if state != "ok"}
        if failing:
            entry["reason"] = "; ".join(f"{check}: {state}" for check, state in failing.items())
        return entry

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready only when every deployed service is (and never before this process has started)."""
        if not self._started:
            return False, {"service": self.name, "version": VERSION, "status": "unready",
                           "checks": {"gateway": "not started"}, "services": []}
        health = await self.health()
        ready = health["status"] == "ready"
        return ready, {"service": self.name, "version": VERSION, "status": "ready" if ready else "unready",
                       "checks": {entry["service"]: "ok" if entry["status"] == "ready" else entry["status"]
                                  for entry in health["services"] if entry["status"] != "not_deployed"},
                       "services": health["services"]}
