"""Wire the ingest service: settings -> database, publisher, rejected-events and erasure consumers -> app."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import Counter

from libs.common.db import Database
from libs.common.kafka import REJECTED_TOPIC, Subscription
from libs.common.privacy import erasure_subscription
from libs.common.service import Service, create_app
from services.ingest.adapters import rate_buckets
from services.ingest.adapters.rejected import MIGRATIONS, RejectedRecord, metadata, rejected_events
from services.ingest.api import router
from services.ingest.handlers import forget_rejections, keep_rejections
from services.ingest.settings import IngestSettings

DESCRIPTION = (
    "Validates storefront behaviour events (native and Segment-compatible), publishes the accepted ones "
    "to `shoploop.events.v1` keyed by person key, and keeps the rejected ones, with the reason, for "
    "correction and replay. Erasure requests on `shoploop.privacy.v1` delete the person's rejected events."
)
REJECTED_GROUP = "ingest-rejected"


def build_service(settings: IngestSettings) -> Service:
    database = Database(settings.database_url, metadata=metadata, migrations=[*MIGRATIONS, rate_buckets.MIGRATION])
    rejected = Subscription(
        group=REJECTED_GROUP, topics=[REJECTED_TOPIC], handle=keep_rejections,
        decode=RejectedRecord.model_validate_json, event_id=lambda record: record.rejection_id,
    )
    erasures = erasure_subscription("ingest", forget_rejections, erases_from=[rejected_events.name])
    return Service("ingest", settings, database, [rejected, erasures])


def create_ingest_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    service = build_service(settings)
    # Bodies are bounded by the request limit on every route (the gzip'd size here; inflated, again in the route).
    app = create_app(service, routers=[router], title="shoploop ingest", description=DESCRIPTION,
                     max_body_bytes=settings.limits.max_request_bytes)
    app.state.rate_limiter = rate_buckets.SharedRateLimiter(service.database, settings.rate_limit.events_per_second,
                                                            settings.rate_limit.burst)
    app.state.ingest_counters = Counter(
        "shoploop_ingest_events_total", "Events answered by ingest, by outcome", ["outcome"],
        registry=service.metrics.registry,
    )
    return app
