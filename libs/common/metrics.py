"""Prometheus metrics: one registry per service process, shared names across services."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.common.answers import AnswerWatch, route_template


class Metrics:
    """The metrics every service exports; services add their own to ``registry``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "shoploop_http_requests_total", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "shoploop_http_request_duration_seconds", "HTTP request latency", ["route", "method"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.events_consumed = Counter(
            "shoploop_events_consumed_total", "Kafka records applied (duplicates included)", ["consumer"], registry=r
        )
        self.duplicates_skipped = Counter(
            "shoploop_duplicate_events_total", "Records skipped because their event_id was processed", ["consumer"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "shoploop_consumer_lag", "Records behind the partition's high watermark",
            ["consumer", "topic", "partition"], registry=r,
        )
        self.processing_errors = Counter(
            "shoploop_processing_errors_total", "Failed attempts to apply a record", ["consumer"], registry=r
        )
        self.dead_letters = Counter(
            "shoploop_dead_letters_total", "Records sent to the dead-letter topic", ["consumer"], registry=r
        )
        self.last_event_time = Gauge(
            "shoploop_last_event_occurred_timestamp_seconds", "occurred_at of the newest applied event",
            ["consumer"], registry=r,
        )
        self.published = Counter(
            "shoploop_records_published_total", "Records acknowledged by the broker", ["topic"], registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task) counting requests by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = AnswerWatch(send)
        try:
            await self.app(scope, receive, answer.send)
        finally:
            path, method = route_template(scope), scope["method"]
            self.metrics.http_requests.labels(path, method, str(answer.status)).inc()
            self.metrics.http_latency.labels(path, method).observe(answer.seconds())
