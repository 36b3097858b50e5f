"""Plain-data builders for the campaign report's unit tests."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.campaigns.domain.assignment import Variant
from services.campaigns.domain.attribution import Assignment, Campaign, OrderEvent, Touch

T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
WINBACK = Campaign(
    "winback",
    holdout_bp=2000,
    variants=(Variant("coupon", 4000), Variant("message", 4000)),
    window_days=7,
    per_touch_cost=Decimal("0.05"),
)


def at(days=0, hours=0, minutes=0):
    return T0 + timedelta(days=days, hours=hours, minutes=minutes)


def assigned(person, arm, when=T0):
    return Assignment(person, arm, when)


def delivered(person, arm, when=T0):
    return Touch(person, arm, "delivered", when)


def completed(person, order_id, when, total="100.00", *, event_id=None, discount=None, code=None):
    return OrderEvent(
        person_key=person,
        order_id=order_id,
        event_id=event_id or f"{order_id}-completed-{when.isoformat()}",
        occurred_at=when,
        status="completed",
        total=Decimal(total),
        discount=None if discount is None else Decimal(discount),
        coupon_code=code,
    )


def refunded(person, order_id, when, amount=None, *, event_id=None, total="100.00"):
    return OrderEvent(
        person_key=person,
        order_id=order_id,
        event_id=event_id or f"{order_id}-refunded-{when.isoformat()}",
        occurred_at=when,
        status="refunded",
        total=Decimal(total),
        refund_amount=None if amount is None else Decimal(amount),
    )
