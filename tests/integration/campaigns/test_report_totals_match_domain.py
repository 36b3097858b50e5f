"""The report's SQL totals (adapters/report_totals.py) and its running totals (adapters/report_state.py) equal the
domain's reference ``arm_totals`` over the same assignments, touches, coupons and raw order events sent shuffled
and in pieces, on SQLite and PostgreSQL; rebuilding the running totals from the stored rows changes nothing."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.db import Database
from libs.common.events import PublishedEvent, epoch_micros
from services.campaigns.adapters import report_state
from services.campaigns.adapters.migrations import MIGRATIONS
from services.campaigns.adapters.orders import record_orders
from services.campaigns.adapters.report_totals import arm_totals_sql
from services.campaigns.adapters.tables import assignments, campaigns, coupons, metadata, report_arms, touches
from services.campaigns.domain.assignment import HOLDOUT, Variant
from services.campaigns.domain.attribution import (
    ArmTotals,
    Assignment,
    Campaign,
    OrderEvent,
    Touch,
    arm_totals,
)

BASE = datetime(2026, 3, 1, tzinfo=UTC)
LATER = BASE + timedelta(days=30)  # after every time a history here holds
TOTALS = ["0.00", "0.01", "99.99", "150.00", "1000000000000.00"]
_examples = itertools.count()

# Whole days and a few hours: attribution windows (whole days) and as_of are hit exactly and often.
moments = st.builds(lambda days, hours: BASE + timedelta(days=days, hours=hours), st.integers(0, 4),
                    st.sampled_from([0, 0, 0, 12]))
person = st.fixed_dictionaries({
    "assigned": st.sampled_from([True, True, True, False]), "arm": st.integers(0, 2), "at": moments,
    "touch": st.sampled_from(["pending", "delivered", "delivered", "failed", "suppressed"]), "delivered": moments,
    "limit": st.integers(1, 2),
})
order_event = st.fixed_dictionaries({
    "person": st.integers(0, 3), "order": st.integers(0, 4), "refund": st.booleans(), "at": moments,
    "total": st.sampled_from(TOTALS), "discount": st.sampled_from([None, "0.00", "10.00", "30.00"]),
    "code": st.sampled_from([None, "own", "own", "other"]), "amount": st.sampled_from([None, "5.00", "0.01"]),
})


@pytest.fixture
async def database(database_url) -> AsyncIterator[Database]:
    db = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await db.start()
    yield db
    await db.close()


def _event(prefix: str, n: int, item: dict[str, Any], codes: dict[int, str]) -> dict[str, Any]:
    person_key = f"{prefix}p{item['person']}"
    order: dict[str, Any] = {"order_id": f"{prefix}o{item['order']}"}
    if item["refund"]:
        order |= {"status": "refunded", **({"refund_amount": item["amount"]} if item["amount"] else {})}
    else:
        order |= {"status": "completed", "total": item["total"],
                  "items": [{"product_id": "sku", "quantity": 1, "unit_price": item["total"]}]}
        if item["discount"] is not None:
            order["discount"] = item["discount"]
        code = codes.get(item["person"] if item["code"] == "own" else (item["person"] + 1) % 4)
        if item["code"] and code:
            order["coupon_code"] = code
    return {"event_id": f"{prefix}e{n}", "type": "order", "user_id": person_key, "person_key": person_key,
            "occurred_at": item["at"], "order": order}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(holdout_bp=st.sampled_from([0, 2000, 5000]), two_variants=st.booleans(), window_days=st.integers(1, 2),
       people=st.lists(person, min_size=3, max_size=4), orders=st.lists(order_event, min_size=2, max_size=14),
       as_of=moments, seed=st.integers(0, 2**16), resend=st.booleans())
async def test_sql_totals_equal_the_domain_arm_totals(database, holdout_bp, two_variants, window_days, people, orders,
                                                      as_of, seed, resend):
    prefix = f"x{next(_examples)}-"
    campaign_id = f"{prefix}campaign"
    rest = 10_000 - holdout_bp
    variants = ((Variant("a", rest // 2), Variant("b", rest - rest // 2)) if two_variants
                else (Variant("a", rest),))
    names = [v.name for v in variants] + ([HOLDOUT] if holdout_bp else [])
    campaign = Campaign(campaign_id=campaign_id, holdout_bp=holdout_bp, variants=variants, window_days=window_days)

    assigned, touched, codes, coupon_rows = [], [], {}, []
    for index, p in enumerate(people):
        if not p["assigned"]:
            continue
        key, arm = f"{prefix}p{index}", names[p["arm"] % len(names)]
        assigned.append(Assignment(key, arm, p["at"]))
        if arm == HOLDOUT:
            continue
        delivered = p["delivered"] if p["touch"] == "delivered" else None
        touched.append(Touch(key, arm, p["touch"], delivered))
        if p["touch"] in ("pending", "delivered"):
            codes[index] = f"{prefix}CODE{index}"
            coupon_rows.append({"code": codes[index], "campaign_id": campaign_id, "person_key": key,
                                "touch_id": f"{prefix}t{index}", "expires_us": None, "per_person_limit": p["limit"]})
    raw = [_event(prefix, n, item, codes) for n, item in enumerate(orders)]

    async with database.begin() as connection:
        await connection.execute(campaigns.insert().values(
            campaign_id=campaign_id, name="c", status="active", audience="{}", audience_kind="segment_entered",
            offer="{}", variants="[]", holdout_bp=holdout_bp, window_days=window_days, per_touch_cost_cents=0,
            webhook_url="http://127.0.0.1:9/", webhook_secret="s", created_us=0))
        if assigned:
            await connection.execute(assignments.insert(), [
                {"campaign_id": campaign_id, "person_key": a.person_key, "variant": a.arm,
                 "assigned_us": epoch_micros(a.assigned_at)} for a in assigned])
        if touched:
            # Delivered ones start pending and are delivered below, as the deliverer records them.
            await connection.execute(touches.insert(), [
                {"touch_id": f"{prefix}t{t.person_key}", "campaign_id": campaign_id, "person_key": t.person_key,
                 "variant": t.arm, "status": "pending" if t.status == "delivered" else t.status, "created_us": 0,
                 "attempts": 0} for t in touched])
        if coupon_rows:
            await connection.execute(coupons.insert(), coupon_rows)
        # As enrolment does for the rows it writes.
        await report_state.refresh_persons(connection, [a.person_key for a in assigned])
    for t in touched:
        if t.status == "delivered":
            async with database.begin() as connection:
                delivered_us = epoch_micros(t.delivered_at)
                await connection.execute(touches.update().where(touches.c.touch_id == f"{prefix}t{t.person_key}")
                                         .values(status="delivered", delivered_us=delivered_us))
                await report_state.record_deliveries(connection, [(campaign_id, t.person_key, t.arm)], delivered_us)
    # Shuffled, in pieces, perhaps twice: arrival order and redelivery must not matter.
    shuffled = raw + (raw if resend else [])
    random.Random(seed).shuffle(shuffled)
    for start in range(0, len(shuffled), 4):
        async with database.begin() as connection:
            await record_orders(connection, [PublishedEvent.model_validate(e) for e in shuffled[start:start + 4]])

    async with database.read() as connection:
        from_sql = await arm_totals_sql(connection, campaign_id, epoch_micros(as_of))
        as_of_now = await report_state.arm_totals_as_of(connection, campaign_id, epoch_micros(as_of))
        running = await report_state.running_totals(connection, campaign_id, epoch_micros(LATER))
        arms_before = await _arms(connection, campaign_id)
    domain_orders = [OrderEvent(
        person_key=e["person_key"], order_id=e["order"]["order_id"], event_id=e["event_id"], occurred_at=e["occurred_at"],
        status=e["order"]["status"], total=Decimal(e["order"].get("total", "0")),
        discount=None if "discount" not in e["order"] else Decimal(e["order"]["discount"]),
        coupon_code=e["order"].get("coupon_code"),
        refund_amount=None if "refund_amount" not in e["order"] else Decimal(e["order"]["refund_amount"]),
    ) for e in raw]
    limits = {row["code"]: (row["person_key"], row["per_person_limit"]) for row in coupon_rows}
    from_domain = arm_totals(campaign, assigned, touched, domain_orders, limits, as_of)
    assert_same(from_sql, from_domain)
    assert_same(as_of_now, from_domain)
    assert running is not None
    assert_same(running, arm_totals(campaign, assigned, touched, domain_orders, limits, LATER))

    async with database.begin() as connection:
        await connection.run_sync(report_state.rebuild, campaign_id)
    async with database.read() as connection:
        rebuilt = await _arms(connection, campaign_id)
    # The same sums; a running horizon never goes back (an order moved earlier leaves it where it was).
    assert {arm: sums for arm, (sums, _) in rebuilt.items()} == {arm: sums for arm, (sums, _) in arms_before.items()}
    assert all(arms_before[arm][1] >= horizon for arm, (_, horizon) in rebuilt.items())


async def _arms(connection: Any, campaign_id: str) -> dict[str, tuple[tuple[Any, ...], int]]:
    query = report_arms.select().where(report_arms.c.campaign_id == campaign_id)
    return {row.variant: (tuple(row)[:-1], row.horizon_us) for row in await connection.execute(query)}


def assert_same(got: dict[str, ArmTotals], expected: dict[str, ArmTotals]) -> None:
    for name in set(got) | set(expected):
        assert got.get(name, ArmTotals()) == expected.get(name, ArmTotals()), name
