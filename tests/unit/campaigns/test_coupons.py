import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.campaigns.domain.coupons import (
    CODE_ALPHABET,
    REASONS,
    CouponOffer,
    CouponOrder,
    discount,
    expires_at,
    new_code,
    redemptions,
    validate,
    validate_offer,
)

NOW = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
OFFER = CouponOffer(percent_off=Decimal("20"), min_spend=Decimal("100.00"), expires_in_days=14, per_person_limit=2)
EXPIRY = NOW + timedelta(days=3)


def check(**overrides):
    arguments = {
        "code_known": True,
        "code_person": "ann",
        "person_key": "ann",
        "total": Decimal("150.00"),
        "now": NOW,
        "expires_at": EXPIRY,
        "offer": OFFER,
        "uses": 0,
        "campaign_status": "active",
    }
    arguments.update(overrides)
    return validate(**arguments)


def test_a_valid_code_answers_its_discount_and_no_reason():
    answer = check()

    assert (answer.valid, answer.reason, answer.discount) == (True, None, Decimal("30.00"))


def test_an_unknown_code_is_unknown():
    assert check(code_known=False, code_person=None, offer=None, campaign_status=None).reason == "unknown"


def test_another_persons_code_is_not_this_person():
    answer = check(person_key="bob")

    assert (answer.valid, answer.reason, answer.discount) == (False, "not_this_person", Decimal(0))


@pytest.mark.parametrize("status", ["paused", "draft", "completed"])
def test_a_code_of_a_campaign_that_is_not_active_is_refused(status):
    assert check(campaign_status=status).reason == "campaign_not_active"


def test_the_expiry_instant_itself_is_expired_and_a_microsecond_before_is_valid():
    assert check(now=EXPIRY).reason == "expired"
    assert check(now=EXPIRY - TICK).valid


def test_a_code_without_expiry_never_expires():
    assert check(now=NOW + timedelta(days=3650), expires_at=None).valid


def test_a_total_exactly_the_minimum_spend_is_valid_and_a_cent_less_is_below_minimum():
    assert check(total=Decimal("100.00")).valid
    assert check(total=Decimal("99.99")).reason == "below_minimum"


def test_the_limit_th_use_is_valid_and_the_next_is_used_up():
    assert check(uses=1).valid  # the second of two uses
    assert check(uses=2).reason == "used_up"  # a third


@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_the_first_failing_check_in_spec_order_gives_the_reason(unknown, stranger, inactive, expired, below, used):
    answer = check(
        code_known=not unknown,
        person_key="bob" if stranger else "ann",
        campaign_status="paused" if inactive else "active",
        now=EXPIRY if expired else NOW,
        total=Decimal("99.99") if below else Decimal("100.00"),
        uses=2 if used else 1,
    )
    failing = [reason for reason, fails in zip(REASONS, (unknown, stranger, inactive, expired, below, used), strict=True) if fails]

    assert answer.reason == (failing[0] if failing else None)
    assert answer.valid is (not failing)
    assert answer.discount == (Decimal(0) if failing else Decimal("20.00"))


@pytest.mark.parametrize(
    ("offer", "total", "expected"),
    [
        (CouponOffer(percent_off=Decimal("15")), Decimal("10.03"), Decimal("1.50")),  # 1.5045 down
        (CouponOffer(percent_off=Decimal("10")), Decimal("0.05"), Decimal("0.01")),  # 0.005 half up
        (CouponOffer(percent_off=Decimal("12.5")), Decimal("0.20"), Decimal("0.03")),  # 0.025 half up
        (CouponOffer(percent_off=Decimal("100")), Decimal("59.90"), Decimal("59.90")),
        (CouponOffer(amount_off=Decimal("30.00")), Decimal("25.00"), Decimal("25.00")),  # capped at the total
        (CouponOffer(amount_off=Decimal("30.00")), Decimal("80.00"), Decimal("30.00")),
        (CouponOffer(amount_off=Decimal("30.00")), Decimal("0"), Decimal("0")),
    ],
)
def test_discount_rounds_a_percent_half_up_to_cents_and_never_exceeds_the_total(offer, total, expected):
    assert discount(offer, total) == expected


@given(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100), places=2),
    st.decimals(min_value=0, max_value=Decimal("1000000000000"), places=2),
)
def test_a_percent_discount_is_the_nearest_cent_with_halves_up(percent, total):
    exact = total * percent / 100
    cents = int(exact * 100)  # floor: exact is non-negative
    nearest = Decimal(cents + (1 if exact * 100 - cents >= Decimal("0.5") else 0)) / 100

    assert discount(CouponOffer(percent_off=percent), total) == min(nearest, total)


def test_expiry_is_the_touch_time_plus_whole_days():
    assert expires_at(NOW, OFFER) == NOW + timedelta(days=14)
    assert expires_at(NOW, CouponOffer(amount_off=Decimal(5))) is None


def test_new_codes_are_sixteen_unambiguous_symbols_and_do_not_repeat():
    codes = {new_code() for _ in range(2000)}

    assert len(codes) == 2000
    assert all(re.fullmatch(f"[{CODE_ALPHABET}]{{16}}", code) for code in codes)
    assert not set("01ILO") & set(CODE_ALPHABET)


def order(event_id, minute, discount=Decimal("5.00")):
    return CouponOrder("ann", f"o-{event_id}", event_id, NOW + timedelta(minutes=minute), "CODE", discount)


def test_the_first_limit_orders_by_time_then_event_id_are_the_redemptions():
    orders = [order("e3", 10), order("e2", 5), order("e1", 5), order("e4", 1)]

    assert [o.event_id for o in redemptions(orders, 2)] == ["e4", "e1"]
    assert [o.event_id for o in redemptions(orders, 3)] == ["e4", "e1", "e2"]


def test_an_order_after_the_limit_is_no_redemption_whenever_it_arrives():
    early_arrivals = [order("late", 60)]
    everything = [order("late", 60), order("first", 1)]

    assert [o.event_id for o in redemptions(early_arrivals, 1)] == ["late"]
    assert [o.event_id for o in redemptions(everything, 1)] == ["first"]


@pytest.mark.parametrize(
    ("offer", "field"),
    [
        (CouponOffer(), "exactly one of percent_off and amount_off"),
        (CouponOffer(percent_off=Decimal(10), amount_off=Decimal(5)), "exactly one"),
        (CouponOffer(percent_off=Decimal(0)), "offer.percent_off"),
        (CouponOffer(percent_off=Decimal("100.01")), "offer.percent_off"),
        (CouponOffer(percent_off=Decimal("10.005")), "offer.percent_off"),
        (CouponOffer(amount_off=Decimal("-1")), "offer.amount_off"),
        (CouponOffer(amount_off=Decimal("1000000000000.01")), "offer.amount_off"),
        (CouponOffer(amount_off=Decimal("NaN")), "offer.amount_off"),
        (CouponOffer(amount_off=Decimal(5), min_spend=Decimal("-0.01")), "offer.min_spend"),
        (CouponOffer(amount_off=Decimal(5), expires_in_days=0), "offer.expires_in_days"),
        (CouponOffer(amount_off=Decimal(5), expires_in_days=3651), "offer.expires_in_days"),
        (CouponOffer(amount_off=Decimal(5), per_person_limit=0), "offer.per_person_limit"),
        (CouponOffer(amount_off=Decimal(5), per_person_limit=1001), "offer.per_person_limit"),
    ],
)
def test_refuses_an_offer_out_of_bounds_naming_the_field(offer, field):
    with pytest.raises(ValueError, match=field):
        validate_offer(offer)


def test_accepts_a_bounded_offer():
    validate_offer(OFFER)
    validate_offer(CouponOffer(amount_off=Decimal("0.01"), min_spend=Decimal(0), expires_in_days=3650, per_person_limit=1000))
