"""The one way every route renders money and parses cursors and client times (libs/common/http.py)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.http import (
    ApiError,
    days_starting_in,
    decode_cursor,
    encode_cursor,
    money,
    parse_as_of,
    parse_moment,
    parse_span,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(("amount", "expected"), [
    (Decimal("0.005"), 0.01), (Decimal("0.015"), 0.02), (Decimal("0.025"), 0.03), (Decimal("2.675"), 2.68),
    (Decimal("0.004999"), 0.0), (Decimal("-0.001"), 0.0), (12, 12.0), (None, None),
])
def test_money_rounds_half_up_to_cents(amount, expected):
    rendered = money(amount)
    assert rendered == expected
    assert rendered is None or str(rendered) != "-0.0"


keys = st.lists(st.one_of(st.text(max_size=40), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
                min_size=1, max_size=3)


@given(keys)
def test_a_cursor_gives_back_the_key_it_was_made_from(values):
    assert decode_cursor(encode_cursor(values), len(values)) == tuple(values)


@given(st.text(max_size=60), st.integers(min_value=1, max_value=3))
def test_any_other_cursor_is_a_400_never_a_crash(cursor, arity):
    try:
        decoded = decode_cursor(cursor, arity)
    except ApiError as error:
        assert (error.status, error.code) == (400, "invalid_cursor")
    else:
        assert decoded is not None and len(decoded) == arity


def test_a_cursor_of_the_wrong_arity_or_types_is_refused():
    with pytest.raises(ApiError):
        decode_cursor(encode_cursor(["a", "b"]), 1)
    with pytest.raises(ApiError):
        decode_cursor(encode_cursor([True]), 1)


def test_a_date_is_the_start_of_that_day_in_the_reporting_zone():
    assert parse_moment("2026-03-02", "from", SHANGHAI) == datetime(2026, 3, 1, 16, tzinfo=UTC)


def test_a_plus_that_arrived_as_a_space_is_mended():
    assert parse_as_of("2026-03-02T08:00:00 08:00", datetime.now(UTC)) == datetime(2026, 3, 2, tzinfo=UTC)


@pytest.mark.parametrize(("start", "end", "fragment"), [
    ("0001-01-01", "2026-01-01", "from: "),
    ("1969-12-31T23:59:59Z", "2026-01-01", "from: 1969-12-31T23:59:59Z is outside"),
    ("2026-01-01", "9999-12-31T23:59:59+14:00", "to: "),
    ("2026-01-01", "9999-12-31T23:59:59-14:00", "to: "),
    ("2026-02-30", "2026-03-01", "from: day is out of range"),
    ("2026-03-01", "2026-03-01", "from: must be before to"),
    ("2020-01-01", "2026-01-01", "to: a range covers at most 1096 days"),
])
def test_bad_ranges_are_422_naming_the_parameter(start, end, fragment):
    with pytest.raises(ApiError) as raised:
        parse_span(start, end, SHANGHAI, 1096)
    assert raised.value.status == 422 and fragment in raised.value.detail


@given(st.text(max_size=40))
def test_any_as_of_text_is_a_timestamp_or_a_422(text):
    try:
        parse_as_of(text, datetime.now(UTC))
    except ApiError as error:
        assert error.status == 422 and error.detail.startswith("as_of: ")


_ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "America/Sao_Paulo", "America/Havana", "Pacific/Apia"]


@given(zone_name=st.sampled_from(_ZONES),
       start=st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
       length=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=5)))
def test_days_starting_in_a_range_are_those_whose_midnight_falls_in_it(zone_name, start, length):
    # Zones whose clocks jumped at midnight (Sao Paulo, Havana) or skipped a whole day (Apia, 2011-12-30) included.
    zone = ZoneInfo(zone_name)
    end = start + length
    first, last = days_starting_in(start, end, zone)
    around = [start.astimezone(zone).date() + timedelta(days=n) for n in range(-2, 9)]
    expected = [day for day in around if start <= datetime.combine(day, time(), zone) < end]
    got = [day for day in around if first <= day <= last]
    assert got == expected
