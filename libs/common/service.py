"""One service process: its database, publisher and consumers, their start/stop, and the shared routes
(``/healthz``, ``/readyz``, ``/metrics``) every service serves (SPEC.md "Operations")."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.common.auth import ApiKeys, open_route
from libs.common.broker import resident_bytes
from libs.common.db import Database
from libs.common.events import format_timestamp
from libs.common.guard import DEFAULT_MAX_BODY_BYTES, check_routes, install_guard
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
# In ``CommonSettings.control_dir``: its presence asks every service process to drain.
DRAIN_FILE = "drain"
DRAIN_RETRY_AFTER = "5"


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
    # Draining: writes (every method but GET/HEAD/OPTIONS) are refused with 503; ``writes_in_flight`` counts
    # those let in, so that the launcher stops the stack only once each has been answered (see _watch_drain).
    draining: bool = field(init=False, default=False)
    writes_in_flight: int = field(init=False, default=0)
    writes_done: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _watching: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.name)
        self.publisher = Publisher(self.settings.common.kafka, client_id=self.name, metrics=self.metrics)
        broker_pid = self.settings.common.embedded_broker_pid
        if broker_pid is not None:
            gauge = Gauge("shoploop_broker_resident_bytes",
                          "Resident memory of the embedded broker (it keeps every record in memory)",
                          registry=self.metrics.registry)
            gauge.set_function(lambda: float(resident_bytes(broker_pid) or 0))

    async def start(self) -> None:
        if self.database is not None:  # a service without state of its own needs no broker either
            await self.database.start()
            # The HTTP side comes up even while the broker is away; /readyz says so until it is connected.
            self._connecting = asyncio.create_task(self._connect_kafka(), name=f"{self.name}-kafka-connect")
        if self._control_dir is not None:
            self._control_dir.mkdir(parents=True, exist_ok=True)
            self._control_file("serving").write_text(self.name)
            self._watching = asyncio.create_task(self._watch_drain(), name=f"{self.name}-drain-watch")

    @property
    def _control_dir(self) -> Path | None:
        directory = self.settings.common.control_dir
        return Path(directory) if directory else None

    def _control_file(self, state: str) -> Path:
        assert self._control_dir is not None
        return self._control_dir / f"{self.name}-{os.getpid()}.{state}"

    async def _watch_drain(self, poll_seconds: float = 0.05) -> None:
        """Once ``<control_dir>/drain`` exists: refuse new writes, wait for those in flight (ingest's answer
        comes after the broker's acknowledgement), then say so with ``<service>-<pid>.drained``."""
        assert self._control_dir is not None
        drain = self._control_dir / DRAIN_FILE
        while True:  # a file another process creates: nothing to wait on but polling
            if drain.exists():
                break
            await asyncio.sleep(poll_seconds)
        self.draining = True
        log.info("draining: new writes are refused", extra={"writes_in_flight": self.writes_in_flight})
        if not self.writes_in_flight:
            self.writes_done.set()
        await self.writes_done.wait()
        self._control_file("drained").write_text(self.name)
        log.info("drained: every write let in has been answered")

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
        # An erasure is applied once the service's other groups have applied what was published for the person
        # before it (Subscription.settles_first).
        others = {s.group: tuple(s.topics) for s in self.subscriptions if not s.erases_from}
        runtimes = [
            ConsumerRuntime(replace(subscription, settles_first=others) if subscription.erases_from else subscription,
                            kafka=kafka, database=self.database, publisher=self.publisher, metrics=self.metrics)
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
        if self._watching is not None:
            self._watching.cancel()
        for runtime in self.consumers:
            await runtime.stop()
        await self.publisher.stop()
        if self.database is not None:
            await self.database.close()
        if self._control_dir is not None:
            for state in ("serving", "drained"):
                self._control_file(state).unlink(missing_ok=True)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Database and broker reachable, every consumer assigned and running."""
        checks: dict[str, str] = {}
        # The answer is unauthenticated: it names the failing check, the log holds the exception.
        # A service without state of its own has neither a database nor a broker connection to check (start()).
        if self.database is not None:
            try:
                await asyncio.wait_for(self.database.ping(), 2.0)
                checks["database"] = "ok"
            except Exception as exc:
                checks["database"] = "unreachable"
                log.warning("readiness: database unreachable", extra={"error": repr(exc)})
            try:
                await self.publisher.ping()
                checks["broker"] = "ok"
            except Exception as exc:
                checks["broker"] = "unreachable"
                log.warning("readiness: broker unreachable", extra={"error": repr(exc)})
        consumers: dict[str, Any] = {}
        for subscription in self.subscriptions:
            runtime = next((c for c in self.consumers if c.subscription.group == subscription.group), None)
            key = f"consumer:{subscription.group}"
            if runtime is None:
                checks[key] = "not started"
                continue
            status = runtime.status
            if status.failed:
                checks[key] = "failed"  # the exception is in the log ("consumer stopped by an error")
            elif not status.assigned:
                checks[key] = "no partitions assigned"
            else:
                checks[key] = "ok"
            consumers[subscription.group] = {
                "topics": list(subscription.topics),
                "assigned": status.assigned,
                "lag": status.lag,
                "last_event_occurred_at": status.last_event_occurred_at
                and format_timestamp(status.last_event_occurred_at),
                "last_processed_at": status.last_processed_at and format_timestamp(status.last_processed_at),
                "dead_lettered": status.dead_lettered,
                "settling": status.settling,  # an erasure waiting for the service's other groups
            }
        if self.draining:
            checks["draining"] = "stopping: writes are refused"
        ready = all(value == "ok" for value in checks.values())
        body = {
            "service": self.name, "version": VERSION, "status": "ready" if ready else "unready",
            "checks": checks, "consumers": consumers,
        }
        broker_pid = self.settings.common.embedded_broker_pid
        if broker_pid is not None:
            body["embedded_broker"] = {"resident_bytes": resident_bytes(broker_pid)}
        return ready, body


class Liveness(BaseModel):
    """The answer of ``/healthz``."""

    status: Literal["ok", "failed"]
    service: str
    version: str
    failed_consumers: list[str] | None = Field(default=None, description="failed: the consumer groups that died")


class ConsumerState(BaseModel):
    """One consumer group in ``/readyz``."""

    topics: list[str]
    assigned: list[str] = Field(description="the partitions it holds")
    lag: int | None
    last_event_occurred_at: str | None
    last_processed_at: str | None
    dead_lettered: int = Field(description="records sent to its dead-letter topic since the process started")
    settling: bool = Field(description="an erasure waiting for the service's other groups")


class Readiness(BaseModel):
    """The answer of ``/readyz`` (200 when ready, 503 otherwise); a service may add its own fields."""

    model_config = ConfigDict(extra="allow")

    service: str
    version: str
    status: Literal["ready", "unready"]
    checks: dict[str, str] = Field(description='each check: "ok", or why it fails')
    consumers: dict[str, ConsumerState] | None = None


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"], dependencies=[open_route()])

    @router.get("/healthz", response_model=Liveness, responses={503: {"model": Liveness}},
                summary="The process is alive (503 once a consumer loop has died: restart it)")
    async def healthz(request: Request) -> JsonResponse:
        service: Service = request.app.state.service
        dead = sorted(c.subscription.group for c in service.consumers if c.status.failed)
        body: dict[str, Any] = {"status": "failed" if dead else "ok", "service": service.name, "version": VERSION}
        if dead:
            body["failed_consumers"] = dead  # names only: the exceptions are in the log
        return JsonResponse(body, status_code=503 if dead else 200)

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
                summary="Database and broker reachable, consumers assigned")
    async def readyz(request: Request) -> JsonResponse:
        ready, body = await request.app.state.service.readiness()
        return JsonResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        payload, content_type = request.app.state.service.metrics.render()
        return Response(payload, media_type=content_type)

    return router


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class DrainMiddleware:
    """While the service drains, a write gets 503 with Retry-After (nothing of it was done); the writes let in
    before are counted until answered. Pure ASGI: one attribute check per request."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        service = self.service
        if service.draining:
            refusal = JsonResponse({"code": "stopping", "detail": "the service is stopping; nothing of this "
                                    "request was done, retry it in a moment"},
                                   status_code=503, headers={"Retry-After": DRAIN_RETRY_AFTER})
            await refusal(scope, receive, send)
            return
        service.writes_in_flight += 1  # no await since the check: the drain watcher sees this request
        try:
            await self.app(scope, receive, send)
        finally:
            service.writes_in_flight -= 1
            if service.draining and not service.writes_in_flight:
                service.writes_done.set()


def create_app(service: Service, *, routers: Sequence[APIRouter], title: str, description: str,
               on_startup: Callable[[Service], Any] | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """A FastAPI app for ``service`` with the shared routes, auth keys, metrics and error shape.

    Every route of ``routers`` declares its access (``requires(scope)``, libs/common/auth.py); the guard
    checks it before the body is read, and bounds bodies to the route's ``max_body_bytes`` or this default.
    An app with a route that declares nothing refuses to start.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_routes(app)  # before anything starts: a route without an access rule is a bug, not a warning
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
    # redirect_slashes off: "/v1/customers/a/" names the person "a/", it is not a redirect to "a".
    app = FastAPI(title=title, description=description, version=VERSION, lifespan=lifespan,
                  default_response_class=JsonResponse, redirect_slashes=False)
    app.state.service = service
    app.state.api_keys = ApiKeys(service.settings.common.api_keys)
    app.add_middleware(DrainMiddleware, service=service)  # inside the guard: a key is checked before a 503
    install_guard(app, app.state.api_keys, default_max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outside the guard: 401s are counted too
    # Outermost: the request id is set before anything else runs and is in every line logged for it.
    app.add_middleware(RequestIdMiddleware)
    install_error_handler(app)
    app.include_router(_operations_router())
    for router in routers:
        app.include_router(router)
    return app
