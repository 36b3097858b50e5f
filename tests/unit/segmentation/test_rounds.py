"""domain/rounds.py: between two rounds with the same facts, a customer whose built-in segments differ always
has a counted order in one of the windows (brute force over the integer definitions of FiguresAt and RfmCuts)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.segmentation.domain.customers import FiguresAt, LifecycleThresholds
from services.segmentation.domain.rfm import RfmCuts
from services.segmentation.domain.rounds import DAY_US, Round, merged, order_windows

A0 = datetime(2026, 5, 1, tzinfo=UTC)
HOUR_US = DAY_US // 24


def _standing(figures_at: FiguresAt, cuts: RfmCuts, orders: list[tuple[int, int]]) -> tuple[object, ...]:
    visible = [(at, cents) for at, cents in orders if at <= figures_at.as_of_us]
    last = max((at for at, _ in visible), default=None)
    lookback = [cents for at, cents in visible if at > figures_at.lookback_start_us]
    segment = cuts.segment_of(figures_at.recency_days(last), len(lookback)) if lookback else None
    return figures_at.lifecycle(len(visible), last), segment, figures_at.tier(sum(lookback))


def _cuts(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    recency = tuple(sorted((rng.randint(0, 365) for _ in range(4)), reverse=True))
    frequency = tuple(sorted(rng.randint(1, 4) for _ in range(4)))
    return recency, frequency


@pytest.mark.parametrize("seed", range(20))
def test_a_customer_whose_segments_change_has_an_order_in_a_window(seed):
    rng = random.Random(seed)
    lifecycle = LifecycleThresholds(rng.choice([0, 30]), 90, rng.choice([90, 180]))
    step = rng.choice([HOUR_US, DAY_US, 7 * DAY_US, 31 * DAY_US, 200 * DAY_US])
    recency_before, frequency = _cuts(rng)
    # The R cuts move a little between rounds (or not at all); the F cuts stay (else: everyone, see below).
    recency_now = tuple(max(0, cut + rng.choice([0, 0, -1, 1, 3])) for cut in recency_before)
    at0, at1 = FiguresAt(A0, lifecycle), FiguresAt(A0 + timedelta(microseconds=step), lifecycle)
    before = Round(at0.as_of_us, recency_before, frequency, at0.as_of_us)
    now = Round(at1.as_of_us, tuple(sorted(recency_now, reverse=True)), frequency, at0.as_of_us)
    windows = order_windows(before, now, lifecycle)
    assert windows is not None
    cuts0 = RfmCuts(100, before.recency_cuts, frequency, ())
    cuts1 = RfmCuts(100, now.recency_cuts, frequency, ())
    changed = 0
    for _ in range(400):
        # Whole days (on the boundaries), and an hour or a microsecond off them.
        orders = [(at0.as_of_us - rng.randint(-10, 400) * DAY_US + rng.choice([0, 0, 0, HOUR_US, 1, -1]),
                   rng.choice([0, 1999, 200_000, 1_000_000])) for _ in range(rng.randint(1, 4))]
        if _standing(at0, cuts0, orders) != _standing(at1, cuts1, orders):
            changed += 1
            assert any(after < at <= until for at, _ in orders for after, until in windows), orders
    assert changed > 0 or step == HOUR_US


def test_time_going_back_or_the_f_cuts_moving_means_everyone():
    lifecycle = LifecycleThresholds()
    before = Round(1_000 * DAY_US, (200, 100, 50, 10), (1, 1, 2, 3), 1_000 * DAY_US)
    assert order_windows(before, Round(999 * DAY_US, (200, 100, 50, 10), (1, 1, 2, 3), 0), lifecycle) is None
    assert order_windows(before, Round(1_001 * DAY_US, (200, 100, 50, 10), (1, 2, 2, 3), 0), lifecycle) is None
    assert order_windows(before, Round(1_001 * DAY_US, (), (), 0), lifecycle) is None
    assert order_windows(before, Round(1_000 * DAY_US, (200, 100, 50, 10), (1, 1, 2, 3), 0), lifecycle) == []


def test_overlapping_windows_are_joined():
    assert merged([(5, 9), (0, 3), (3, 4), (8, 12), (20, 21)]) == [(0, 4), (5, 12), (20, 21)]
