"""Wire the campaigns service: settings -> database, consumers, scheduler -> app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI

from libs.common.db import Database
from libs.common.kafka import EVENTS_TOPIC, SEGMENTS_TOPIC, Subscription
from libs.common.privacy import erasure_subscription
from libs.common.service import create_app
from services.campaigns.adapters.migrations import MIGRATIONS
from services.campaigns.adapters.tables import coupons, metadata, touches
from services.campaigns.api import router
from services.campaigns.handlers import (
    PERSONAL_TABLES,
    SegmentChange,
    erase_persons,
    follow_segments,
    record_events,
)
from services.campaigns.runtime import CampaignsService
from services.campaigns.settings import CampaignsSettings

DESCRIPTION = (
    "Campaigns with holdouts and A/B variants, targeted at segments (`shoploop.segments.v1`) or at abandoned carts "
    "and unanswered inquiries (`shoploop.events.v1`); signed webhook touches (Standard Webhooks), one coupon per "
    "contact, and reports by intent to treat with lift over the holdout. Touches go to `shoploop.campaigns.v1`."
)
EVENTS_GROUP = "campaigns"
SEGMENTS_GROUP = "campaigns-segments"


def build_service(settings: CampaignsSettings, *, clock: Callable[[], datetime] | None = None) -> CampaignsService:
    database = Database(settings.database_url, metadata=metadata, migrations=MIGRATIONS)
    service = CampaignsService(settings, database, clock=clock)
    wake = service.scheduler.wake
    service.subscriptions = [
        Subscription(group=EVENTS_GROUP, topics=[EVENTS_TOPIC], handle=record_events(service.rules),
                     after_commit=wake),
        Subscription(group=SEGMENTS_GROUP, topics=[SEGMENTS_TOPIC],
                     handle=follow_segments(service.rules, service.clock), decode=SegmentChange.from_json,
                     event_id=lambda change: change.change_id, after_commit=wake),
        erasure_subscription("campaigns", erase_persons,
                             erases_from=sorted({table.name for table in (*PERSONAL_TABLES, coupons, touches)})),
    ]
    return service


def create_campaigns_app(settings: CampaignsSettings | None = None, *,
                         clock: Callable[[], datetime] | None = None) -> FastAPI:
    service = build_service(settings or CampaignsSettings(), clock=clock)
    return create_app(service, routers=[router], title="shoploop campaigns", description=DESCRIPTION)
