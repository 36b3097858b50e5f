"""Writers of report inputs are serialised by the report lock (PostgreSQL; SQLite's writers queue at BEGIN
IMMEDIATE already). Each test holds one writer's transaction open, starts a second writer, waits until the second
is seen waiting on the lock (pg_locks), then commits the first: the second must see what the first committed.
Without the lock the second would read before the first commits, and the race below would be lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from libs.common.db import Database
from libs.common.events import PublishedEvent, epoch_micros, format_timestamp
from services.campaigns.adapters import report_state
from services.campaigns.adapters.campaigns import CampaignRecord, insert_campaign
from services.campaigns.adapters.migrations import MIGRATIONS
from services.campaigns.adapters.orders import record_orders
from services.campaigns.adapters.report_totals import arm_totals_sql
from services.campaigns.adapters.tables import metadata, report_arms, touches
from services.campaigns.domain.frequency import FrequencyCap
from services.campaigns.enrolment import PENDING, SUPPRESSED, EnrolmentRules, enrol
from tests.support import eventually

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ONE_TOUCH_A_WEEK = EnrolmentRules(global_holdout_bp=0, cap=FrequencyCap(max_touches=1, per_days=7))


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await db.start()
    yield db
    await db.close()


# The races need PostgreSQL's concurrency: SQLite serialises every writer at BEGIN IMMEDIATE.
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _campaign(campaign_id: str) -> CampaignRecord:
    return CampaignRecord(
        campaign_id=campaign_id, name=campaign_id, status="active",
        audience={"kind": "segment_entered", "segment_id": "lifecycle:dormant"}, offer={"kind": "message"},
        variants=[{"name": "a", "split_bp": 10_000}], holdout_bp=0, window_days=7, per_touch_cost_cents=0,
        budget_cents=None, webhook_url="http://127.0.0.1:9/hook", webhook_secret="whsec_test", webhook_disabled=None,
        start_us=None, end_us=None, send_us=None, scheduled_sent=False, paused_reason=None, created_us=0,
        activated_us=0, completed_us=None)


async def _waiting_on_an_advisory_lock(database: Database) -> bool:
    async with database.read() as connection:
        query = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return (await connection.execute(query)).scalar_one() > 0


async def _second_writer_after_the_first(database: Database, first, second) -> None:
    """Run ``first`` in a transaction left open until ``second`` (in its own) is waiting on the lock."""
    async with database.begin() as connection:
        await first(connection)
        waiting = asyncio.create_task(_in_transaction(database, second))
        await eventually(lambda: _waiting_on_an_advisory_lock(database), what="the second writer waiting")
        assert not waiting.done()
    await waiting


async def _in_transaction(database: Database, work) -> None:
    async with database.begin() as connection:
        await work(connection)


@on_postgresql
async def test_two_campaigns_entering_one_person_at_once_respect_the_frequency_cap(database: Database):
    async with database.begin() as connection:
        for campaign_id in ("first", "second"):
            await insert_campaign(connection, _campaign(campaign_id))

    def entering(campaign_id: str):
        async def work(connection) -> None:
            await enrol(connection, _campaign(campaign_id), [("p-1", epoch_micros(NOW))], rules=ONE_TOUCH_A_WEEK,
                        now_us=epoch_micros(NOW))
        return work

    await _second_writer_after_the_first(database, entering("first"), entering("second"))
    async with database.read() as connection:
        statuses = dict((await connection.execute(select(touches.c.campaign_id, touches.c.status))).all())
    assert statuses == {"first": PENDING, "second": SUPPRESSED}


@on_postgresql
async def test_an_assignment_and_an_order_written_at_once_both_reach_the_running_report(database: Database):
    async with database.begin() as connection:
        await insert_campaign(connection, _campaign("winback"))
    order = PublishedEvent.model_validate({
        "event_id": "e-1", "type": "order", "user_id": "p-1", "person_key": "p-1",
        "occurred_at": format_timestamp(NOW + timedelta(hours=1)),
        "order": {"order_id": "o-1", "status": "completed", "total": "80.00",
                  "items": [{"product_id": "sku", "quantity": 1, "unit_price": "80.00"}]}})

    async def ordering(connection) -> None:
        await record_orders(connection, [order])

    async def entering(connection) -> None:
        # Entered the segment before the order: the order falls in the assignment's window.
        await enrol(connection, _campaign("winback"), [("p-1", epoch_micros(NOW))], rules=ONE_TOUCH_A_WEEK,
                    now_us=epoch_micros(NOW + timedelta(hours=2)))

    await _second_writer_after_the_first(database, ordering, entering)
    later = epoch_micros(NOW + timedelta(days=30))
    async with database.read() as connection:
        running = await report_state.running_totals(connection, "winback", later)
        computed = await arm_totals_sql(connection, "winback", later)
        orders = (await connection.execute(text("SELECT count(*) FROM counted_orders"))).scalar_one()
    assert orders == 1
    assert computed["a"].conversions == 1
    assert running == computed


async def test_the_report_for_now_is_read_from_the_running_totals_and_an_earlier_one_computed(database: Database):
    async with database.begin() as connection:
        await insert_campaign(connection, _campaign("winback"))
        await enrol(connection, _campaign("winback"), [("p-1", epoch_micros(NOW))], rules=ONE_TOUCH_A_WEEK,
                    now_us=epoch_micros(NOW))
        await record_orders(connection, [PublishedEvent.model_validate({
            "event_id": "e-1", "type": "order", "user_id": "p-1", "person_key": "p-1",
            "occurred_at": format_timestamp(NOW + timedelta(hours=1)),
            "order": {"order_id": "o-1", "status": "completed", "total": "80.00",
                      "items": [{"product_id": "sku", "quantity": 1, "unit_price": "80.00"}]}})])
    async with database.read() as connection:
        # Before the order: the running sums hold something later, so they are not the answer.
        assert await report_state.running_totals(connection, "winback", epoch_micros(NOW)) is None
        before = await report_state.arm_totals_as_of(connection, "winback", epoch_micros(NOW))
        after = await report_state.arm_totals_as_of(connection, "winback", epoch_micros(NOW + timedelta(hours=1)))
        arms = (await connection.execute(select(func.count()).select_from(report_arms))).scalar_one()
    assert (before["a"].assigned, before["a"].conversions) == (1, 0)
    assert (after["a"].assigned, after["a"].conversions) == (1, 1)
    assert arms == 1
