"""Customer figures at `as_of`: counted orders, lifecycle stage, membership tier, repeat orders."""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from services.segmentation.domain.rfm import RfmFigures

LOOKBACK = timedelta(days=365)
REPEAT_WINDOW = timedelta(days=90)
LOYALTY_MILESTONE_ORDERS = 3
_DAY = timedelta(days=1)
# A rule written once for its two forms: datetimes/Decimals (the reference) and integers (FiguresAt).
_Ordered = TypeVar("_Ordered", int, timedelta, Decimal)


class OrderStatus(StrEnum):
    COMPLETED = "completed"
    REFUNDED = "refunded"


class LifecycleStage(StrEnum):
    PROSPECT = "prospect"
    NEW = "new"
    ACTIVE = "active"
    DORMANT = "dormant"
    CHURNED = "churned"


class MembershipTier(StrEnum):
    SILVER = "silver"
    GOLD = "gold"
    DIAMOND = "diamond"


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One raw `order` event as the segmentation service sees it."""

    event_id: str
    person_key: str
    order_id: str
    status: OrderStatus
    occurred_at: datetime
    total: Decimal


@dataclass(frozen=True, slots=True)
class OrderFact:
    """A counted order: the order_id's earliest completed event."""

    order_id: str
    person_key: str
    occurred_at: datetime
    total: Decimal
    event_id: str


@dataclass(frozen=True, slots=True)
class LifecycleThresholds:
    """Lifecycle day thresholds (SPEC.md Customers, lifecycle; settings)."""

    new_days: int = 30
    active_days: int = 90
    dormant_days: int = 180

    def __post_init__(self) -> None:
        if not 0 <= self.new_days <= self.active_days <= self.dormant_days:
            raise ValueError("lifecycle thresholds need 0 <= new_days <= active_days <= dormant_days")


@dataclass(frozen=True, slots=True)
class TierThresholds:
    """Membership tier gmv thresholds: silver strictly above, gold and diamond at or above (SPEC.md Customers)."""

    silver: Decimal = Decimal(0)
    gold: Decimal = Decimal(2000)
    diamond: Decimal = Decimal(10000)

    def __post_init__(self) -> None:
        if not 0 <= self.silver < self.gold <= self.diamond:
            raise ValueError("tier thresholds need 0 <= silver < gold <= diamond")


@dataclass(frozen=True, slots=True)
class CustomerFigures:
    """One person's order figures at as_of, gross of refunds (SPEC.md Customers)."""

    orders: int
    gmv: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    recency_days: int | None
    frequency: int
    monetary: Decimal
    repeat_orders_90d: int
    loyalty_milestone: bool
    lifecycle: LifecycleStage
    tier: MembershipTier | None

    @property
    def rfm_figures(self) -> RfmFigures | None:
        """R, F, M inputs, or None outside the RFM population (no completed order in the lookback)."""
        if self.frequency == 0 or self.recency_days is None:
            return None
        return RfmFigures(self.recency_days, self.frequency, self.monetary)


def _counting_key(order: OrderRecord | OrderFact) -> tuple[datetime, str]:
    return order.occurred_at, order.event_id


def counted_orders(records: Iterable[OrderRecord]) -> list[OrderFact]:
    """Each order_id once, at its earliest completed event, ties by event_id (SPEC.md Definitions, Orders)."""
    earliest: dict[str, OrderRecord] = {}
    for record in records:
        # Refunds never reduce customer figures: RFM, lifecycle and tiers are gross of refunds.
        if record.status != OrderStatus.COMPLETED:
            continue
        counted = earliest.get(record.order_id)
        if counted is None or _counting_key(record) < _counting_key(counted):
            earliest[record.order_id] = record
    facts = (
        OrderFact(r.order_id, r.person_key, r.occurred_at, r.total, r.event_id) for r in earliest.values()
    )
    return sorted(facts, key=_counting_key)


def lifecycle_stage(
    orders: int, last_order_at: datetime | None, as_of: datetime, thresholds: LifecycleThresholds
) -> LifecycleStage:
    """Lifecycle stage from the completed orders up to as_of (SPEC.md Customers, lifecycle)."""
    if last_order_at is None:
        return LifecycleStage.PROSPECT
    return stage_by_recency(orders, as_of - last_order_at, timedelta(days=thresholds.new_days),
                            timedelta(days=thresholds.active_days), timedelta(days=thresholds.dormant_days))


def stage_by_recency(orders: int, since_last: _Ordered, new: _Ordered, active: _Ordered,
                     dormant: _Ordered) -> LifecycleStage:
    """The lifecycle rule on any one unit of time (timedeltas here, epoch microseconds in ``FiguresAt``)."""
    if orders == 0:
        return LifecycleStage.PROSPECT
    if orders == 1 and since_last <= new:
        return LifecycleStage.NEW
    if since_last <= active:
        return LifecycleStage.ACTIVE
    if since_last <= dormant:
        return LifecycleStage.DORMANT
    return LifecycleStage.CHURNED


def membership_tier(lookback_gmv: Decimal, thresholds: TierThresholds) -> MembershipTier | None:
    """Membership tier from the gmv in the 365-day lookback (SPEC.md Customers, membership tier)."""
    return tier_by_gmv(lookback_gmv, thresholds.silver, thresholds.gold, thresholds.diamond)


def tier_by_gmv(gmv: _Ordered, silver: _Ordered, gold: _Ordered, diamond: _Ordered) -> MembershipTier | None:
    """The tier rule on any one unit of money (Decimal here, whole cents in ``FiguresAt``)."""
    if gmv >= diamond:
        return MembershipTier.DIAMOND
    if gmv >= gold:
        return MembershipTier.GOLD
    if gmv > silver:
        return MembershipTier.SILVER
    return None


@dataclass(frozen=True, slots=True)
class OrderTotals:
    """One person's counted orders up to as_of, summed: everything their figures are computed from."""

    orders: int
    gmv: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    frequency: int  # counted orders in the 365-day lookback
    monetary: Decimal  # their gmv
    repeat_orders_90d: int


def order_totals(orders: Iterable[OrderFact], as_of: datetime) -> OrderTotals:
    """Sums of one person's counted orders up to as_of (SPEC.md Customers)."""
    history = sorted((o for o in orders if o.occurred_at <= as_of), key=_counting_key)
    if not history:
        return OrderTotals(0, Decimal(0), None, None, 0, Decimal(0), 0)
    first = history[0].occurred_at
    lookback = [o for o in history if o.occurred_at > as_of - LOOKBACK]
    return OrderTotals(
        orders=len(history),
        gmv=_gmv(history),
        first_order_at=first,
        last_order_at=history[-1].occurred_at,
        frequency=len(lookback),
        monetary=_gmv(lookback),
        repeat_orders_90d=sum(1 for o in history[1:] if o.occurred_at - first <= REPEAT_WINDOW),
    )


def figures_from_totals(
    totals: OrderTotals,
    as_of: datetime,
    lifecycle: LifecycleThresholds = LifecycleThresholds(),
    tiers: TierThresholds = TierThresholds(),
) -> CustomerFigures:
    """One person's figures from their order totals at as_of (SPEC.md Customers)."""
    last = totals.last_order_at
    return CustomerFigures(
        orders=totals.orders,
        gmv=totals.gmv,
        first_order_at=totals.first_order_at,
        last_order_at=last,
        recency_days=None if last is None else (as_of - last) // _DAY,
        frequency=totals.frequency,
        monetary=totals.monetary,
        repeat_orders_90d=totals.repeat_orders_90d,
        loyalty_milestone=totals.repeat_orders_90d >= LOYALTY_MILESTONE_ORDERS,
        lifecycle=lifecycle_stage(totals.orders, last, as_of, lifecycle),
        tier=membership_tier(totals.monetary, tiers),
    )


_MICROSECOND = timedelta(microseconds=1)


class FiguresAt:
    """Lifecycle stage, membership tier and recency at one as_of, on integers (epoch microseconds, cents).

    The same definitions as ``lifecycle_stage``, ``membership_tier`` and ``CustomerFigures.recency_days``
    (tests hold them equal), for evaluating a million customers without a datetime and a Decimal each.
    """

    def __init__(self, as_of: datetime, lifecycle: LifecycleThresholds = LifecycleThresholds(),
                 tiers: TierThresholds = TierThresholds()) -> None:
        self.as_of_us = (as_of - _EPOCH) // _MICROSECOND
        self.lookback_start_us = self.as_of_us - LOOKBACK // _MICROSECOND
        self._new_us = timedelta(days=lifecycle.new_days) // _MICROSECOND
        self._active_us = timedelta(days=lifecycle.active_days) // _MICROSECOND
        self._dormant_us = timedelta(days=lifecycle.dormant_days) // _MICROSECOND
        # Whole cents: above silver <=> above floor(silver cents); at least gold <=> at least ceil(gold cents).
        self._silver_cents = math.floor(tiers.silver * 100)
        self._gold_cents = math.ceil(tiers.gold * 100)
        self._diamond_cents = math.ceil(tiers.diamond * 100)

    def limits(self) -> tuple[int, int, int, int, int, int]:
        """``(new_us, active_us, dormant_us, silver_cents, gold_cents, diamond_cents)``: the integer bounds
        ``lifecycle`` and ``tier`` compare with, for the same decisions made in SQL."""
        return (self._new_us, self._active_us, self._dormant_us, self._silver_cents, self._gold_cents,
                self._diamond_cents)

    def lifecycle(self, orders: int, last_order_us: int | None) -> LifecycleStage:
        if last_order_us is None:
            return LifecycleStage.PROSPECT
        return stage_by_recency(orders, self.as_of_us - last_order_us, self._new_us, self._active_us,
                                self._dormant_us)

    def tier(self, lookback_gmv_cents: int) -> MembershipTier | None:
        return tier_by_gmv(lookback_gmv_cents, self._silver_cents, self._gold_cents, self._diamond_cents)

    def recency_days(self, last_order_us: int) -> int:
        return (self.as_of_us - last_order_us) // _DAY_US

    def standing(self, first_seen_us: int | None, orders: Iterable[tuple[int, int]]) -> "Standing":
        """A person's lifecycle stage and tier (None when not known at as_of: no event at or before it) and RFM
        figures ``(recency_days, frequency, monetary cents)`` (None outside the RFM population), from the time of
        their first event and their counted orders ``(occurred_us, total_cents)``: ``customer_figures`` on
        integers."""
        count = frequency = monetary = 0
        last = None
        for occurred_us, cents in orders:
            if occurred_us > self.as_of_us:
                continue
            count += 1
            if last is None or occurred_us > last:
                last = occurred_us
            if occurred_us > self.lookback_start_us:
                frequency += 1
                monetary += cents
        stage_and_tier = None
        if first_seen_us is not None and first_seen_us <= self.as_of_us:
            stage_and_tier = (self.lifecycle(count, last), self.tier(monetary))
        rfm = None
        if frequency:
            assert last is not None
            rfm = (self.recency_days(last), frequency, monetary)
        return Standing(stage_and_tier, rfm)


@dataclass(frozen=True, slots=True)
class Standing:
    """What the population counts take from one person at an as_of (``FiguresAt.standing``)."""

    stage_and_tier: tuple[LifecycleStage, MembershipTier | None] | None
    rfm: tuple[int, int, int] | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = _DAY // _MICROSECOND


def customer_figures(
    orders: Iterable[OrderFact],
    as_of: datetime,
    lifecycle: LifecycleThresholds = LifecycleThresholds(),
    tiers: TierThresholds = TierThresholds(),
) -> CustomerFigures:
    """One person's figures from their counted orders, using only orders up to as_of (SPEC.md Customers)."""
    return figures_from_totals(order_totals(orders, as_of), as_of, lifecycle, tiers)


def _gmv(orders: list[OrderFact]) -> Decimal:
    return sum((o.total for o in orders), Decimal(0))
