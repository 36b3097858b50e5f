"""Wire the funnel service: settings -> database, consumers of events and erasure requests -> app."""

from __future__ import annotations

from fastapi import FastAPI

from libs.common.db import WRITE_HEAVY_SQLITE_PRAGMAS, Database
from libs.common.kafka import EVENTS_TOPIC, Subscription
from libs.common.privacy import erasure_subscription
from libs.common.service import Service, create_app
from services.funnel.adapters.tables import MIGRATIONS, events, metadata
from services.funnel.api import router
from services.funnel.decoding import decode_event
from services.funnel.handlers import EventRecorder, erase_persons
from services.funnel.runtime import FunnelService
from services.funnel.settings import FunnelSettings

DESCRIPTION = (
    "Consumes `shoploop.events.v1` and answers the full funnel: daily and range KPIs, the built-in and "
    "operator-defined funnels, product metrics, the product matrix with lifecycle stages, and channel metrics. "
    "Every answer is computed from the stored events at query time, so it is exact whatever order events "
    "arrived in. Erasure requests on `shoploop.privacy.v1` replace the person's key by a pseudonym."
)
EVENTS_GROUP = "funnel"


def build_service(settings: FunnelSettings) -> Service:
    database = Database(settings.database_url, metadata=metadata, migrations=MIGRATIONS,
                        # SQLite: every event adds to six B-trees (the key, seq and four indexes).
                        sqlite_pragmas=WRITE_HEAVY_SQLITE_PRAGMAS)
    service = FunnelService("funnel", settings, database)
    # What the events consumer commits goes to the DuckDB copy as it is (not read back from the database).
    recorder = EventRecorder(service.mirror)
    service.subscriptions = [
        # The events table is keyed by event_id and its insert leaves a stored one alone: it is its own
        # idempotency record, so the runtime's claims (a second write per event) are skipped.
        # Records are decoded straight into rows (decoding.py). Batches of up to 5,000 (not 2,000): a catching-up
        # consumer spends about 8 us less per event on the per-batch statements and commits (bench/funnel.py).
        Subscription(group=EVENTS_GROUP, topics=[EVENTS_TOPIC], handle=recorder.record_events, decode=decode_event,
                     claim_event_ids=False, max_batch=5000, after_commit=recorder.committed),
        erasure_subscription("funnel", erase_persons, erases_from=[events.name]),
    ]
    return service


def create_funnel_app(settings: FunnelSettings | None = None) -> FastAPI:
    settings = settings or FunnelSettings()
    return create_app(build_service(settings), routers=[router], title="shoploop funnel", description=DESCRIPTION)
