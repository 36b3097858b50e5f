"""Wire the segmentation service: settings -> database, consumers, membership scheduler -> app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI

from libs.common.db import WRITE_HEAVY_SQLITE_PRAGMAS, Database
from libs.common.kafka import EVENTS_TOPIC, Subscription
from libs.common.privacy import erasure_subscription
from libs.common.service import create_app
from services.segmentation.adapters.migrations import MIGRATIONS
from services.segmentation.adapters.tables import PERSONAL_TABLES, fact_changes, metadata
from services.segmentation.api import router
from services.segmentation.decoding import decode_event
from services.segmentation.handlers import erase_customers, record_customer_facts
from services.segmentation.runtime import SegmentationService, system_clock
from services.segmentation.settings import SegmentationSettings

DESCRIPTION = (
    "Customer profiles from `shoploop.events.v1`: RFM, lifecycle stages, membership tiers and rule segments, "
    "every figure at any `as_of`. Segment enter/exit records go to `shoploop.segments.v1`; "
    "erasure requests travel on `shoploop.privacy.v1`."
)
EVENTS_GROUP = "segmentation"


def build_service(settings: SegmentationSettings, *, clock: Callable[[], datetime] = system_clock) -> SegmentationService:
    database = Database(settings.database_url, metadata=metadata, migrations=MIGRATIONS,
                        sqlite_pragmas=WRITE_HEAVY_SQLITE_PRAGMAS)
    service = SegmentationService(settings, database, clock=clock)
    service.subscriptions = [
        # Records are decoded straight into what the facts keep (decoding.py).
        Subscription(group=EVENTS_GROUP, topics=[EVENTS_TOPIC], handle=record_customer_facts, decode=decode_event,
                     claim_event_ids=False, max_batch=5000, after_commit=service.scheduler.facts_committed),
        erasure_subscription("segmentation", erase_customers,
                             erases_from=[table.name for table in (*PERSONAL_TABLES, fact_changes)]),
    ]
    return service


def create_segmentation_app(settings: SegmentationSettings | None = None, *,
                            clock: Callable[[], datetime] = system_clock) -> FastAPI:
    settings = settings or SegmentationSettings()
    service = build_service(settings, clock=clock)
    return create_app(service, routers=[router], title="shoploop segmentation", description=DESCRIPTION,
                      max_body_bytes=settings.rule_segments.max_body_bytes)
