"""Schema steps of the campaigns database, oldest first."""

from __future__ import annotations

from libs.common.db import Migration, create_all
from services.campaigns.adapters.tables import metadata

MIGRATIONS = [
    Migration(1, "campaigns, segment mirror, assignments, touches, coupons, orders, triggers, outbox, spend",
              create_all(metadata)),
]
