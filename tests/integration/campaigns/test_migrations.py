"""The campaigns schema steps on a database made before them: step 2 builds the running report from the rows
already stored, step 3 adds the segment mirror's exit times (a database made since has them from step 1)."""

from __future__ import annotations

from sqlalchemy import inspect, select, text

from libs.common.db import SCHEMA_MIGRATIONS, Database
from services.campaigns.adapters.campaigns import insert_campaign
from services.campaigns.adapters.migrations import MIGRATIONS
from services.campaigns.adapters.report_totals import arm_totals_sql
from services.campaigns.adapters.tables import (
    assignments,
    counted_orders,
    metadata,
    report_arms,
    report_persons,
)
from tests.integration.campaigns.test_report_lock import _campaign

LATER_US = 2**62


async def test_steps_2_and_3_upgrade_a_database_made_before_them(database_url):
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    async with database.begin() as connection:
        await insert_campaign(connection, _campaign("winback"))
        await connection.execute(assignments.insert(), [
            {"campaign_id": "winback", "person_key": f"p-{n}", "variant": "a", "assigned_us": 1_000} for n in range(3)])
        await connection.execute(counted_orders.insert(), [
            {"order_id": "o-1", "event_id": "e-1", "person_key": "p-1", "occurred_us": 2_000, "total_cents": 4_250}])
        # As the database stood before steps 2 and 3: no report tables, no exit times, the steps not recorded.
        await connection.execute(text(f"DELETE FROM {SCHEMA_MIGRATIONS} WHERE version IN (2, 3)"))
        await connection.execute(text(f"DROP TABLE {report_persons.name}"))
        await connection.execute(text(f"DROP TABLE {report_arms.name}"))
        await connection.execute(text("ALTER TABLE segment_members DROP COLUMN exited_us"))
    await database.close()

    upgraded = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await upgraded.start()
    try:
        async with upgraded.read() as connection:
            columns = await connection.run_sync(
                lambda sync: {column["name"] for column in inspect(sync).get_columns("segment_members")})
            persons = (await connection.execute(select(report_persons.c.person_key))).scalars().all()
            arms = (await connection.execute(select(report_arms.c.variant, report_arms.c.assigned,
                                                    report_arms.c.revenue))).all()
            computed = await arm_totals_sql(connection, "winback", LATER_US)
    finally:
        await upgraded.close()
    assert "exited_us" in columns
    assert sorted(persons) == ["p-0", "p-1", "p-2"]
    assert [tuple(row) for row in arms] == [("a", 3, "4250")]
    assert computed["a"].assigned == 3 and computed["a"].conversions == 1
