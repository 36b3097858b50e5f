"""Customer figures at `as_of`: counted orders, lifecycle stage, membership tier, repeat orders."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from services.segmentation.domain.rfm import RfmFigures

LOOKBACK = timedelta(days=365)
REPEAT_WINDOW = timedelta(days=90)
LOYALTY_MILESTONE_ORDERS = 3
_DAY = timedelta(days=1)


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
    if orders == 0 or last_order_at is None:
        return LifecycleStage.PROSPECT
    since_last = as_of - last_order_at
    if orders == 1 and since_last <= timedelta(days=thresholds.new_days):
        return LifecycleStage.NEW
    if since_last <= timedelta(days=thresholds.active_days):
        return LifecycleStage.ACTIVE
    if since_last <= timedelta(days=thresholds.dormant_days):
        return LifecycleStage.DORMANT
    return LifecycleStage.CHURNED


def membership_tier(lookback_gmv: Decimal, thresholds: TierThresholds) -> MembershipTier | None:
    """Membership tier from the gmv in the 365-day lookback (SPEC.md Customers, membership tier)."""
    if lookback_gmv >= thresholds.diamond:
        return MembershipTier.DIAMOND
    if lookback_gmv >= thresholds.gold:
        return MembershipTier.GOLD
    if lookback_gmv > thresholds.silver:
        return MembershipTier.SILVER
    return None


def customer_figures(
    orders: Iterable[OrderFact],
    as_of: datetime,
    lifecycle: LifecycleThresholds = LifecycleThresholds(),
    tiers: TierThresholds = TierThresholds(),
) -> CustomerFigures:
    """One person's figures from their counted orders, using only orders up to as_of (SPEC.md Customers)."""
    history = sorted((o for o in orders if o.occurred_at <= as_of), key=_counting_key)
    if not history:
        return CustomerFigures(
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
    first, last = history[0].occurred_at, history[-1].occurred_at
    lookback = [o for o in history if o.occurred_at > as_of - LOOKBACK]
    monetary = _gmv(lookback)
    repeat_orders = sum(1 for o in history[1:] if o.occurred_at - first <= REPEAT_WINDOW)
    return CustomerFigures(
        orders=len(history),
        gmv=_gmv(history),
        first_order_at=first,
        last_order_at=last,
        recency_days=(as_of - last) // _DAY,
        frequency=len(lookback),
        monetary=monetary,
        repeat_orders_90d=repeat_orders,
        loyalty_milestone=repeat_orders >= LOYALTY_MILESTONE_ORDERS,
        lifecycle=lifecycle_stage(len(history), last, as_of, lifecycle),
        tier=membership_tier(monetary, tiers),
    )


def _gmv(orders: list[OrderFact]) -> Decimal:
    return sum((o.total for o in orders), Decimal(0))
