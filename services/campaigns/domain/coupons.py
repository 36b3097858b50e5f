"""Per-person coupon codes: the offer, the discount, validation at checkout and redemptions (SPEC.md "Campaigns", Coupons)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from services.campaigns.domain.lifecycle import ACTIVE

# 31 symbols: no 0/O, 1/I/L: read aloud or typed from a screenshot without ambiguity.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 16
CENT = Decimal("0.01")
MAX_MONEY = Decimal("1000000000000.00")
MAX_EXPIRES_IN_DAYS = 3650
MAX_PER_PERSON_LIMIT = 1000

UNKNOWN = "unknown"
NOT_THIS_PERSON = "not_this_person"
CAMPAIGN_NOT_ACTIVE = "campaign_not_active"
EXPIRED = "expired"
BELOW_MINIMUM = "below_minimum"
USED_UP = "used_up"
# The order in which validate checks, so that a code failing several checks gets the first reason.
REASONS = (UNKNOWN, NOT_THIS_PERSON, CAMPAIGN_NOT_ACTIVE, EXPIRED, BELOW_MINIMUM, USED_UP)


@dataclass(frozen=True, slots=True)
class CouponOffer:
    """Percent or amount off, minimum spend, expiry in days after the touch, per-person use limit (SPEC.md Coupons)."""

    percent_off: Decimal | None = None
    amount_off: Decimal | None = None
    min_spend: Decimal | None = None
    expires_in_days: int | None = None
    per_person_limit: int = 1


@dataclass(frozen=True, slots=True)
class CouponValidation:
    """The answer of POST /v1/coupons/validate: reason None and the discount when valid, else discount 0."""

    valid: bool
    reason: str | None
    discount: Decimal


@dataclass(frozen=True, slots=True)
class CouponOrder:
    """A counted completed order (its counting event) carrying a coupon code."""

    person_key: str
    order_id: str
    event_id: str
    occurred_at: datetime
    coupon_code: str | None
    discount: Decimal = Decimal(0)


def _money(value: Decimal | None, field: str, *, positive: bool) -> None:
    if value is None:
        return
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{field} must be a decimal number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{field} must be {'above' if positive else 'at least'} 0")
    if value > MAX_MONEY:
        raise ValueError(f"{field} must be at most {MAX_MONEY}")
    if value != value.quantize(CENT):
        raise ValueError(f"{field} takes at most 2 decimals")


def validate_offer(offer: CouponOffer) -> None:
    """Raise ValueError naming the offer field out of bounds; exactly one of percent_off and amount_off (SPEC.md)."""
    if (offer.percent_off is None) == (offer.amount_off is None):
        raise ValueError("offer: give exactly one of percent_off and amount_off")
    if offer.percent_off is not None:
        _money(offer.percent_off, "offer.percent_off", positive=True)
        if offer.percent_off > 100:
            raise ValueError("offer.percent_off must be at most 100")
    _money(offer.amount_off, "offer.amount_off", positive=True)
    _money(offer.min_spend, "offer.min_spend", positive=False)
    days = offer.expires_in_days
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_EXPIRES_IN_DAYS):
        raise ValueError(f"offer.expires_in_days must be an integer in 1..{MAX_EXPIRES_IN_DAYS}")
    limit = offer.per_person_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PER_PERSON_LIMIT:
        raise ValueError(f"offer.per_person_limit must be an integer in 1..{MAX_PER_PERSON_LIMIT}")


def new_code() -> str:
    """An unguessable code: 16 symbols of a 31-symbol unambiguous alphabet from `secrets` (~79 bits)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def expires_at(issued_at: datetime, offer: CouponOffer) -> datetime | None:
    """The expiry instant: the touch's creation + expires_in_days x 24 h; None when the offer never expires."""
    return None if offer.expires_in_days is None else issued_at + timedelta(days=offer.expires_in_days)


def discount(offer: CouponOffer, total: Decimal) -> Decimal:
    """Amount off a cart total: percent of it rounded half up to cents, or the amount; never above the total."""
    if offer.percent_off is not None:
        off = (total * offer.percent_off / 100).quantize(CENT, rounding=ROUND_HALF_UP)
    elif offer.amount_off is not None:
        off = offer.amount_off
    else:
        off = Decimal(0)
    return min(off, total)


def validate(
    *,
    code_known: bool,
    code_person: str | None,
    person_key: str,
    total: Decimal,
    now: datetime,
    expires_at: datetime | None,
    offer: CouponOffer | None,
    uses: int,
    campaign_status: str | None,
) -> CouponValidation:
    """Checks in order: unknown, not_this_person, campaign_not_active, expired (now >= expires_at), below_minimum
    (total < min_spend; equal is valid), used_up (uses >= per_person_limit) (SPEC.md Coupons)."""
    reason = None
    if not code_known or offer is None:
        reason = UNKNOWN
    elif code_person != person_key:
        reason = NOT_THIS_PERSON
    elif campaign_status != ACTIVE:
        reason = CAMPAIGN_NOT_ACTIVE
    elif expires_at is not None and now >= expires_at:
        reason = EXPIRED
    elif offer.min_spend is not None and total < offer.min_spend:
        reason = BELOW_MINIMUM
    elif uses >= offer.per_person_limit:
        reason = USED_UP
    if reason is not None:
        return CouponValidation(valid=False, reason=reason, discount=Decimal(0))
    assert offer is not None
    return CouponValidation(valid=True, reason=None, discount=discount(offer, total))


def redemptions(orders: Sequence[CouponOrder], limit: int) -> list[CouponOrder]:
    """The first `limit` of one code's person's counted orders carrying it, by occurred_at then event_id, whenever
    they fall; later ones are not redemptions and a refund gives no use back (SPEC.md Coupons)."""
    return sorted(orders, key=lambda order: (order.occurred_at, order.event_id))[: max(limit, 0)]
