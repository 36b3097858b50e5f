"""Per-key token buckets (SPEC.md "Ingest contract": 429 with Retry-After over the key's rate limit).

The rule is kept in whole micro-tokens and microseconds, so that its SQL form
(``adapters/rate_buckets.py``, shared by every worker and replica through the ingest's database) computes
exactly the same answers; ``tests/integration/test_rate_buckets.py`` holds the two equal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A refill rate in milli-events per second and a burst in events."""

    milli_per_second: int
    burst: int

    @classmethod
    def of(cls, events_per_second: float, burst: int) -> Rate:
        milli = round(events_per_second * 1000)
        if milli < 1 or burst < 1:
            raise ValueError("the rate must be at least 0.001 events/s and the burst at least 1")
        return cls(milli, burst)

    @property
    def burst_e6(self) -> int:
        return self.burst * MICRO

    @property
    def full_after_us(self) -> int:
        """Microseconds an empty bucket takes to fill: a longer wait refills no more (and cannot overflow)."""
        return -(-self.burst_e6 * 1000 // self.milli_per_second)


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens_e6: int
    updated_us: int


def available(bucket: Bucket | None, now_us: int, rate: Rate) -> int:
    """Micro-tokens in the bucket at ``now_us`` (a new key's bucket is full; a clock behind adds nothing)."""
    if bucket is None:
        return rate.burst_e6
    elapsed = min(max(now_us - bucket.updated_us, 0), rate.full_after_us)
    return min(rate.burst_e6, bucket.tokens_e6 + elapsed * rate.milli_per_second // 1000)


def take(bucket: Bucket | None, now_us: int, rate: Rate, cost: int) -> Bucket | None:
    """The bucket after spending ``cost`` events, or None when there are not enough tokens (nothing spent)."""
    have = available(bucket, now_us, rate)
    if have < cost * MICRO:
        return None
    updated = now_us if bucket is None else max(bucket.updated_us, now_us)
    return Bucket(have - cost * MICRO, updated)


def retry_after(bucket: Bucket | None, now_us: int, rate: Rate, cost: int) -> int:
    """Whole seconds until ``cost`` events fit, at least 1 (the Retry-After of a refusal)."""
    missing = cost * MICRO - available(bucket, now_us, rate)
    return max(1, -(-missing // (rate.milli_per_second * 1000)))


class RateLimiter:
    """The rule in one process's memory (tests, single-process tools); services use ``SharedRateLimiter``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = Rate.of(rate, burst)
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str, cost: int) -> int:
        """Spend ``cost`` tokens; return 0 if allowed, else whole seconds to wait (the Retry-After)."""
        now_us = math.floor(self.clock() * MICRO)
        bucket = self._buckets.get(key)
        after = take(bucket, now_us, self.rate, cost)
        if after is None:
            return retry_after(bucket, now_us, self.rate, cost)
        self._buckets[key] = after
        return 0
