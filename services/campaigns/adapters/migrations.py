"""Schema steps of the campaigns database, oldest first."""

from __future__ import annotations

from sqlalchemy import Connection

from libs.common.db import Migration, create_all
from services.campaigns.adapters import report_state
from services.campaigns.adapters.tables import metadata, report_arms, report_persons


def _running_report(connection: Connection) -> None:
    report_persons.create(connection, checkfirst=True)
    report_arms.create(connection, checkfirst=True)
    report_state.rebuild(connection)


MIGRATIONS = [
    Migration(1, "campaigns, segment mirror, assignments, touches, coupons, orders, triggers, outbox, spend",
              create_all(metadata)),
    Migration(2, "running report totals: each assigned person's share and each arm's sums", _running_report),
]
