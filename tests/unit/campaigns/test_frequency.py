from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.campaigns.domain.frequency import FrequencyCap, suppressed

AT = datetime(2026, 5, 10, 9, 30, tzinfo=UTC)
TICK = timedelta(microseconds=1)
CAP = FrequencyCap(max_touches=2, per_days=7)


def test_a_touch_exactly_d_days_earlier_is_outside_the_window():
    week_ago = AT - timedelta(days=7)

    assert not suppressed([week_ago, AT - timedelta(days=1)], AT, CAP)


def test_a_touch_a_microsecond_inside_d_days_counts():
    assert suppressed([AT - timedelta(days=7) + TICK, AT - timedelta(days=1)], AT, CAP)


def test_the_nth_touch_is_allowed_and_the_n_plus_first_suppressed():
    assert not suppressed([AT - timedelta(hours=1)], AT, CAP)
    assert suppressed([AT - timedelta(hours=2), AT - timedelta(hours=1)], AT, CAP)


def test_a_touch_at_the_same_instant_counts_and_later_ones_do_not():
    assert suppressed([AT, AT], AT, CAP)
    assert not suppressed([AT + TICK, AT + TICK], AT, CAP)


def test_no_cap_suppresses_nothing():
    assert not suppressed([AT] * 100, AT, None)


@given(
    st.integers(1, 5),
    st.integers(1, 30),
    st.lists(st.integers(-40 * 86_400, 86_400), max_size=12),
)
def test_suppressed_exactly_when_n_earlier_touches_fall_in_the_last_d_days(max_touches, per_days, offsets):
    times = [AT + timedelta(seconds=offset) for offset in offsets]
    in_window = [t for t in times if AT - timedelta(days=per_days) < t <= AT]

    assert suppressed(times, AT, FrequencyCap(max_touches, per_days)) is (len(in_window) >= max_touches)


@pytest.mark.parametrize(("max_touches", "per_days"), [(0, 7), (1, 0), (-1, -1)])
def test_refuses_a_cap_below_one(max_touches, per_days):
    with pytest.raises(ValueError):
        FrequencyCap(max_touches, per_days)
