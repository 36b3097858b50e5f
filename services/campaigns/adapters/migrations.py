"""Schema steps of the campaigns database, oldest first."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from libs.common.db import Migration, create_all
from services.campaigns.adapters import report_state
from services.campaigns.adapters.tables import metadata, report_arms, report_persons


def _running_report(connection: Connection) -> None:
    report_persons.create(connection, checkfirst=True)
    report_arms.create(connection, checkfirst=True)
    report_state.rebuild(connection)


def _exits_kept(connection: Connection) -> None:
    # A database made before this step has no exited_us (one made after has it from step 1's create_all).
    if "exited_us" not in {column["name"] for column in inspect(connection).get_columns("segment_members")}:
        connection.execute(text("ALTER TABLE segment_members ADD COLUMN exited_us BIGINT"))


MIGRATIONS = [
    Migration(1, "campaigns, segment mirror, assignments, touches, coupons, orders, triggers, outbox, spend",
              create_all(metadata)),
    Migration(2, "running report totals: each assigned person's share and each arm's sums", _running_report),
    Migration(3, "segment mirror keeps the time of each exit", _exits_kept),
]
