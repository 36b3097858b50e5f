from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.campaigns.domain.audiences import (
    MAX_HOURS,
    Audience,
    AudienceKind,
    abandoned,
    deadline,
    entered_after_activation,
    entry_time,
    new_entrants,
    validate_audience,
)

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)


def test_an_order_at_exactly_h_hours_after_the_cart_still_rescues_it():
    assert not abandoned(T, 24, [T + timedelta(hours=24)])


def test_an_order_a_microsecond_after_h_hours_leaves_the_cart_abandoned():
    assert abandoned(T, 24, [T + timedelta(hours=24) + TICK])


def test_an_order_at_the_cart_instant_rescues_it_and_one_just_before_does_not():
    assert not abandoned(T, 2, [T])
    assert abandoned(T, 2, [T - TICK])


def test_a_person_without_orders_abandoned_the_cart():
    assert abandoned(T, 1, [])


@given(
    st.integers(1, MAX_HOURS),
    st.lists(st.integers(-10 * 3_600_000_000, (MAX_HOURS + 10) * 3_600_000_000), max_size=6),
)
def test_abandonment_is_no_order_in_the_closed_window(hours, offsets):
    orders = [T + timedelta(microseconds=offset) for offset in offsets]
    closing = T + timedelta(hours=hours)

    assert abandoned(T, hours, orders) is (not any(T <= order <= closing for order in orders))


def test_the_deadline_and_entry_time_of_a_deadline_audience_is_the_trigger_plus_h():
    audience = Audience(AudienceKind.INQUIRY_UNANSWERED, hours=48)

    assert deadline(T, 48) == T + timedelta(hours=48)
    assert entry_time(audience, trigger_at=T) == T + timedelta(hours=48)


def test_entry_time_of_segment_audiences_is_the_entry_or_send_at():
    send_at = T + timedelta(days=1)

    assert entry_time(Audience(AudienceKind.SEGMENT_ENTERED, segment_id="lifecycle:dormant"), entered_at=T) == T
    assert entry_time(Audience(AudienceKind.SEGMENT_SCHEDULED, segment_id="s", send_at=send_at)) == send_at


def test_segment_entries_count_from_the_activation_instant_on():
    assert entered_after_activation(T, T)
    assert not entered_after_activation(T - TICK, T)


def test_a_person_enters_a_campaign_at_most_once():
    assert new_entrants(["ann", "bob", "ann", "cy", "bob"], {"cy"}) == ["ann", "bob"]


@pytest.mark.parametrize(
    ("audience", "field"),
    [
        (Audience(AudienceKind.SEGMENT_ENTERED), "audience.segment_id"),
        (Audience(AudienceKind.SEGMENT_ENTERED, segment_id="s" * 257), "audience.segment_id"),
        (Audience(AudienceKind.SEGMENT_ENTERED, segment_id="s", hours=3), "audience.hours"),
        (Audience(AudienceKind.SEGMENT_ENTERED, segment_id="s", send_at=T), "audience.send_at"),
        (Audience(AudienceKind.SEGMENT_SCHEDULED, segment_id="s"), "audience.send_at"),
        (Audience(AudienceKind.SEGMENT_SCHEDULED, segment_id="s", send_at=T.replace(tzinfo=None)), "audience.send_at"),
        (Audience(AudienceKind.CART_ABANDONED), "audience.hours"),
        (Audience(AudienceKind.CART_ABANDONED, hours=0), "audience.hours"),
        (Audience(AudienceKind.CART_ABANDONED, hours=MAX_HOURS + 1), "audience.hours"),
        (Audience(AudienceKind.CART_ABANDONED, hours=True), "audience.hours"),
        (Audience(AudienceKind.INQUIRY_UNANSWERED, hours=4, segment_id="s"), "audience.segment_id"),
        (Audience(AudienceKind.INQUIRY_UNANSWERED, hours=4, send_at=T), "audience.send_at"),
    ],
)
def test_refuses_an_audience_missing_or_misusing_a_field_and_names_it(audience, field):
    with pytest.raises(ValueError, match=field):
        validate_audience(audience)


@pytest.mark.parametrize(
    "audience",
    [
        Audience(AudienceKind.SEGMENT_ENTERED, segment_id="lifecycle:dormant"),
        Audience(AudienceKind.SEGMENT_SCHEDULED, segment_id="rfm:champion", send_at=T),
        Audience(AudienceKind.CART_ABANDONED, hours=1),
        Audience(AudienceKind.INQUIRY_UNANSWERED, hours=MAX_HOURS),
    ],
)
def test_accepts_each_kind_with_its_fields(audience):
    validate_audience(audience)
