from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.segmentation.domain.customers import (
    CustomerFigures,
    LifecycleStage,
    LifecycleThresholds,
    MembershipTier,
    OrderFact,
    OrderRecord,
    OrderStatus,
    TierThresholds,
    counted_orders,
    customer_figures,
    lifecycle_stage,
    membership_tier,
)
from services.segmentation.domain.rfm import RfmFigures

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
DEFAULTS = LifecycleThresholds()


def record(order_id, occurred_at, event_id, total="100", status=OrderStatus.COMPLETED):
    return OrderRecord(event_id, "alice", order_id, status, occurred_at, Decimal(total))


def order(before_as_of, total="100", order_id=None):
    occurred_at = AS_OF - before_as_of
    order_id = order_id or f"o-{occurred_at.isoformat()}"
    return OrderFact(order_id, "alice", occurred_at, Decimal(total), f"e-{order_id}")


def figures(*orders, **thresholds):
    return customer_figures(orders, AS_OF, **thresholds)


def test_duplicate_completed_events_count_an_order_once_at_its_earliest_event():
    late = record("o1", AS_OF - timedelta(days=1), "e-late", total="90")
    early = record("o1", AS_OF - timedelta(days=3), "e-early", total="100")

    [counted] = counted_orders([late, early, late])

    assert (counted.occurred_at, counted.event_id, counted.total) == (
        early.occurred_at,
        "e-early",
        Decimal(100),
    )


def test_duplicates_at_the_same_instant_count_the_smallest_event_id():
    at = AS_OF - timedelta(days=1)

    [counted] = counted_orders([record("o1", at, "e-b", total="2"), record("o1", at, "e-a", total="1")])

    assert (counted.event_id, counted.total) == ("e-a", Decimal(1))


def test_refunded_events_neither_create_nor_reduce_orders():
    completed = record("o1", AS_OF - timedelta(days=2), "e1")
    refund = record("o1", AS_OF - timedelta(days=1), "e2", status=OrderStatus.REFUNDED)
    refund_of_unknown_order = record("o2", AS_OF - timedelta(days=1), "e3", status=OrderStatus.REFUNDED)

    counted = counted_orders([completed, refund, refund_of_unknown_order])

    assert [(o.order_id, o.total) for o in counted] == [("o1", Decimal(100))]


def test_counted_orders_come_in_time_order():
    records = [record(f"o{days}", AS_OF - timedelta(days=days), f"e{days}") for days in (1, 9, 5)]

    assert [o.order_id for o in counted_orders(records)] == ["o9", "o5", "o1"]


def test_a_person_without_orders_is_a_prospect_without_figures():
    assert figures() == CustomerFigures(
        orders=0,
        gmv=Decimal(0),
        first_order_at=None,
        last_order_at=None,
        recency_days=None,
        frequency=0,
        monetary=Decimal(0),
        repeat_orders_90d=0,
        loyalty_milestone=False,
        lifecycle=LifecycleStage.PROSPECT,
        tier=None,
    )
    assert figures().rfm_figures is None


def test_orders_after_as_of_are_ignored():
    future = order(-MICROSECOND, total="5000")

    assert figures(future) == figures()
    assert figures(order(timedelta(0), total="10"), future).orders == 1


def test_lifetime_figures_cover_all_history_and_rfm_figures_the_365_day_lookback():
    old = order(timedelta(days=400), total="300")
    recent = order(timedelta(days=10, hours=5), total="20.50")

    result = figures(recent, old)

    assert (result.orders, result.gmv) == (2, Decimal("320.50"))
    assert (result.first_order_at, result.last_order_at) == (old.occurred_at, recent.occurred_at)
    assert result.rfm_figures == RfmFigures(recency_days=10, frequency=1, monetary=Decimal("20.50"))


def test_the_lookback_excludes_an_order_exactly_365_days_old():
    assert figures(order(timedelta(days=365))).rfm_figures is None
    assert figures(order(timedelta(days=365) - MICROSECOND)).frequency == 1


def test_recency_days_are_whole_days_rounded_down():
    assert figures(order(timedelta(days=2) - MICROSECOND)).recency_days == 1
    assert figures(order(timedelta(days=2))).recency_days == 2
    assert figures(order(timedelta(0))).recency_days == 0


def test_an_order_outside_the_lookback_keeps_recency_but_leaves_the_rfm_population():
    result = figures(order(timedelta(days=500)))

    assert (result.recency_days, result.frequency, result.rfm_figures) == (500, 0, None)


def test_repeat_orders_count_an_order_exactly_90_days_after_the_first():
    first = order(timedelta(days=200))

    assert figures(first, order(timedelta(days=110))).repeat_orders_90d == 1
    assert figures(first, order(timedelta(days=110) - MICROSECOND)).repeat_orders_90d == 0


def test_repeat_orders_exclude_the_first_order_but_not_another_at_the_same_instant():
    first = order(timedelta(days=5), order_id="o1")
    same_instant = order(timedelta(days=5), order_id="o2")

    assert figures(first).repeat_orders_90d == 0
    assert figures(first, same_instant).repeat_orders_90d == 1


def test_repeat_orders_ignore_orders_after_as_of():
    first = order(timedelta(days=10))

    assert figures(first, order(-timedelta(days=1))).repeat_orders_90d == 0


def test_loyalty_milestone_needs_three_repeat_orders_within_90_days():
    first = order(timedelta(days=100))
    repeats = [order(timedelta(days=days)) for days in (90, 50, 10)]
    outside_window = order(timedelta(days=9))

    assert figures(first, *repeats[:2], outside_window).loyalty_milestone is False
    assert figures(first, *repeats).repeat_orders_90d == 3
    assert figures(first, *repeats).loyalty_milestone is True


@pytest.mark.parametrize(
    ("orders", "since_last", "stage"),
    [
        (0, None, LifecycleStage.PROSPECT),
        (1, timedelta(0), LifecycleStage.NEW),
        (1, timedelta(days=30), LifecycleStage.NEW),
        (1, timedelta(days=30) + MICROSECOND, LifecycleStage.ACTIVE),
        (2, timedelta(days=1), LifecycleStage.ACTIVE),
        (2, timedelta(days=90), LifecycleStage.ACTIVE),
        (1, timedelta(days=90), LifecycleStage.ACTIVE),
        (2, timedelta(days=90) + MICROSECOND, LifecycleStage.DORMANT),
        (1, timedelta(days=180), LifecycleStage.DORMANT),
        (2, timedelta(days=180) + MICROSECOND, LifecycleStage.CHURNED),
        (1, timedelta(days=1000), LifecycleStage.CHURNED),
    ],
)
def test_lifecycle_stage_boundaries_are_inclusive(orders, since_last, stage):
    last_order_at = AS_OF - since_last if since_last is not None else None

    assert lifecycle_stage(orders, last_order_at, AS_OF, DEFAULTS) == stage


def test_lifecycle_thresholds_are_settings():
    shorter = LifecycleThresholds(new_days=7, active_days=14, dormant_days=28)

    assert lifecycle_stage(1, AS_OF - timedelta(days=8), AS_OF, shorter) == LifecycleStage.ACTIVE
    assert lifecycle_stage(1, AS_OF - timedelta(days=28), AS_OF, shorter) == LifecycleStage.DORMANT
    assert figures(order(timedelta(days=29)), lifecycle=shorter).lifecycle == LifecycleStage.CHURNED


def test_lifecycle_counts_orders_outside_the_lookback():
    assert figures(order(timedelta(days=400)), order(timedelta(days=3))).lifecycle == LifecycleStage.ACTIVE


def test_lifecycle_thresholds_must_be_in_order():
    with pytest.raises(ValueError, match="new_days <= active_days <= dormant_days"):
        LifecycleThresholds(new_days=100, active_days=90)


@pytest.mark.parametrize(
    ("gmv", "tier"),
    [
        ("0", None),
        ("0.01", MembershipTier.SILVER),
        ("1999.99", MembershipTier.SILVER),
        ("2000", MembershipTier.GOLD),
        ("9999.99", MembershipTier.GOLD),
        ("10000", MembershipTier.DIAMOND),
        ("250000", MembershipTier.DIAMOND),
    ],
)
def test_membership_tier_thresholds(gmv, tier):
    assert membership_tier(Decimal(gmv), TierThresholds()) == tier


def test_tier_thresholds_are_settings():
    thresholds = TierThresholds(silver=Decimal(100), gold=Decimal(500), diamond=Decimal(800))

    assert membership_tier(Decimal(100), thresholds) is None
    assert membership_tier(Decimal("100.01"), thresholds) == MembershipTier.SILVER
    assert membership_tier(Decimal(500), thresholds) == MembershipTier.GOLD
    assert membership_tier(Decimal(800), thresholds) == MembershipTier.DIAMOND


def test_tier_thresholds_must_be_in_order():
    with pytest.raises(ValueError, match="silver < gold <= diamond"):
        TierThresholds(gold=Decimal(20000))


def test_tier_counts_only_gmv_in_the_lookback_and_ignores_refunds():
    old = order(timedelta(days=365), total="9000")
    recent = order(timedelta(days=364), total="1999.99")
    counted = counted_orders(
        [
            record("o1", recent.occurred_at, "e1", total="1999.99"),
            record("o1", AS_OF, "e2", total="1999.99", status=OrderStatus.REFUNDED),
        ]
    )

    assert figures(old, recent).tier == MembershipTier.SILVER
    assert figures(old, recent, order(timedelta(days=1), total="0.01")).tier == MembershipTier.GOLD
    assert figures(*counted).tier == MembershipTier.SILVER
