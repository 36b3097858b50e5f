"""One service process: its database, publisher and consumers, their start/stop, and the shared routes
(``/healthz``, ``/readyz``, ``/metrics``) every service serves (SPEC.md "Operations")."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from libs.common.auth import ApiKeys
from libs.common.db import Database
from libs.common.events import format_timestamp
from libs.common.http import JsonResponse, install_error_handler
from libs.common.kafka import (
    ALL_TOPICS,
    ConsumerRuntime,
    Publisher,
    Subscription,
    dead_letter_topic,
    ensure_topics,
)
from libs.common.logs import configure_served_process
from libs.common.metrics import Metrics, MetricsMiddleware
from libs.common.request_ids import RequestIdMiddleware
from libs.common.settings import ServiceSettings

log = logging.getLogger(__name__)
VERSION = "0.1.0"


@dataclass
class Service:
    """Everything a service process owns; routes reach it as ``request.app.state.service``."""

    name: str
    settings: ServiceSettings
    # None for a service without state of its own (the gateway): no database, no broker connection.
    database: Database | None
    subscriptions: Sequence[Subscription] = ()
    metrics: Metrics = field(init=False)
    publisher: Publisher = field(init=False)
    consumers: list[ConsumerRuntime] = field(init=False, default_factory=list)
    _connecting: asyncio.Task[None] | None = field(init=False, default=None)
    _kafka_ready: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.name)
        self.publisher = Publisher(self.settings.common.kafka, client_id=self.name, metrics=self.metrics)

    async def start(self) -> None:
        if self.database is None:
            return
        await self.database.start()
        # The HTTP side comes up even while the broker is away; /readyz says so until it is connected.
        self._connecting = asyncio.create_task(self._connect_kafka(), name=f"{self.name}-kafka-connect")

    async def _connect_kafka(self) -> None:
        kafka = self.settings.common.kafka
        topics = [*ALL_TOPICS, *(dead_letter_topic(s.group) for s in self.subscriptions)]
        delay = 0.2
        while True:
            try:
                await ensure_topics(kafka, topics)
                if not self.publisher.connected:
                    await self.publisher.start()
                break
            except (KafkaError, OSError) as exc:
                log.warning("waiting for the broker", extra={"error": str(exc) or type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        runtimes = [
            ConsumerRuntime(subscription, kafka=kafka, database=self.database, publisher=self.publisher,
                            metrics=self.metrics)
            for subscription in self.subscriptions
        ]
        # Groups join concurrently: a join waits on the broker's rebalance delay, once for all of them.
        await asyncio.gather(*(runtime.start() for runtime in runtimes))
        self.consumers.extend(runtimes)
        self._kafka_ready.set()
        log.info("connected to the broker", extra={"bootstrap_servers": kafka.bootstrap_servers})

    async def wait_connected(self) -> None:
        await self._kafka_ready.wait()

    async def stop(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        for runtime in self.consumers:
            await runtime.stop()
        await self.publisher.stop()
        if self.database is not None:
            await self.database.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Database and broker reachable, every consumer assigned and running."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.database.ping(), 2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}: {exc}"
        try:
            await self.publisher.ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
        consumers: dict[str, Any] = {}
        for subscription in self.subscriptions:
            runtime = next((c for c in self.consumers if c.subscription is subscription), None)
            key = f"consumer:{subscription.group}"
            if runtime is None:
                checks[key] = "not started"
                continue
            status = runtime.status
            if status.failed:
                checks[key] = f"failed: {status.failed}"
            elif not status.assigned:
                checks[key] = "no partitions assigned"
            else:
                checks[key] = "ok"
            consumers[subscription.group] = {
                "assigned": status.assigned,
                "lag": status.lag,
                "last_event_occurred_at": status.last_event_occurred_at
                and format_timestamp(status.last_event_occurred_at),
                "last_processed_at": status.last_processed_at and format_timestamp(status.last_processed_at),
                "dead_lettered": status.dead_lettered,
            }
        ready = all(value == "ok" for value in checks.values())
        return ready, {
            "service": self.name, "version": VERSION, "status": "ready" if ready else "unready",
            "checks": checks, "consumers": consumers,
        }


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="The process is alive (503 once a consumer loop has died: restart it)")
    async def healthz(request: Request) -> JsonResponse:
        service: Service = request.app.state.service
        dead = {c.subscription.group: c.status.failed for c in service.consumers if c.status.failed}
        body = {"status": "failed" if dead else "ok", "service": service.name, "version": VERSION}
        if dead:
            body["failed_consumers"] = dead
        return JsonResponse(body, status_code=503 if dead else 200)

    @router.get("/readyz", summary="Database and broker reachable, consumers assigned")
    async def readyz(request: Request) -> JsonResponse:
        ready, body = await request.app.state.service.readiness()
        return JsonResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        payload, content_type = request.app.state.service.metrics.render()
        return Response(payload, media_type=content_type)

    return router


def create_app(service: Service, *, routers: Sequence[APIRouter], title: str, description: str,
               on_startup: Callable[[Service], Any] | None = None) -> FastAPI:
    """A FastAPI app for ``service`` with the shared routes, auth keys, metrics and error shape."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # What is loaded by now lives as long as the process: keep it out of every collection, and
        # collect the young generation less often (a request allocates thousands of short-lived objects).
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        await service.start()
        if on_startup is not None:
            await on_startup(service)
        try:
            yield
        finally:
            await service.stop()

    configure_served_process()
    app = FastAPI(title=title, description=description, version=VERSION, lifespan=lifespan,
                  default_response_class=JsonResponse)
    app.state.service = service
    app.state.api_keys = ApiKeys(service.settings.common.api_keys)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    # Outermost: the request id is set before anything else runs and is in every line logged for it.
    app.add_middleware(RequestIdMiddleware)
    install_error_handler(app)
    app.include_router(_operations_router())
    for router in routers:
        app.include_router(router)
    return app
