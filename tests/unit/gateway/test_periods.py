from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.domain.periods import changes, previous_period, relative_change

moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(moments, st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=366)))
def test_the_previous_period_has_the_same_length_and_ends_where_the_range_starts(start, length):
    before_start, before_end = previous_period(start, start + length)

    assert before_end == start
    assert before_end - before_start == length


def test_change_is_relative_to_the_previous_value_and_exact_for_money():
    assert relative_change(0.3, 0.1) == 2.0  # (0.3 - 0.1) / 0.1 in floats is 1.9999999999999998
    assert relative_change(50, 100) == -0.5


def test_change_is_null_when_the_previous_value_is_zero_or_unknown():
    assert relative_change(10, 0) is None
    assert relative_change(None, 3) is None
    assert relative_change(3, None) is None


def test_changes_cover_the_numeric_kpis_present_in_both_periods_only():
    current = {"from": "2026-05-01", "gmv": 120.0, "uv": 10, "aov": None, "days": [], "pv": 4}
    previous = {"from": "2026-04-01", "gmv": 100.0, "uv": 0, "aov": 20.0, "days": []}

    assert changes(current, previous) == {"gmv": 0.2, "uv": None, "aov": None}
