"""Per-key token buckets: 429 with Retry-After over the key's rate limit (SPEC.md "Ingest contract")."""

from __future__ import annotations

from services.ingest.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float = 10, burst: int = 20) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rate=rate, burst=burst, clock=clock), clock


def test_a_full_burst_is_allowed_at_once():
    limits, _ = limiter(rate=10, burst=20)
    assert limits.take("k", 20) == 0


def test_single_events_are_allowed_up_to_the_burst():
    limits, _ = limiter(rate=10, burst=20)
    assert [limits.take("k", 1) for _ in range(20)] == [0] * 20
    assert limits.take("k", 1) > 0


def test_over_the_burst_the_answer_is_whole_seconds_to_wait_at_least_one():
    limits, _ = limiter(rate=10, burst=20)
    limits.take("k", 20)
    assert limits.take("k", 1) == 1  # 0.1 s rounded up, never 0


def test_retry_after_is_rounded_up_to_whole_seconds():
    limits, _ = limiter(rate=10, burst=100)
    limits.take("k", 100)
    assert limits.take("k", 15) == 2  # 1.5 s
    assert limits.take("k", 20) == 2  # exactly 2 s
    assert limits.take("k", 21) == 3  # 2.1 s


def test_retry_after_counts_tokens_already_refilled():
    limits, clock = limiter(rate=10, burst=100)
    limits.take("k", 100)
    clock.advance(0.5)  # 5 tokens back
    assert limits.take("k", 30) == 3  # 25 missing at 10/s = 2.5 s


def test_a_refused_request_spends_nothing():
    limits, clock = limiter(rate=10, burst=20)
    limits.take("k", 20)
    clock.advance(1)
    assert limits.take("k", 15) == 1
    assert limits.take("k", 10) == 0


def test_waiting_the_retry_after_lets_the_request_through():
    limits, clock = limiter(rate=4, burst=10)
    limits.take("k", 10)
    wait = limits.take("k", 7)
    assert wait == 2
    clock.advance(wait)
    assert limits.take("k", 7) == 0


def test_tokens_refill_over_time():
    limits, clock = limiter(rate=10, burst=20)
    limits.take("k", 20)
    clock.advance(1)
    assert limits.take("k", 10) == 0
    assert limits.take("k", 1) == 1


def test_refill_is_capped_at_the_burst():
    limits, clock = limiter(rate=10, burst=20)
    limits.take("k", 20)
    clock.advance(3600)
    assert limits.take("k", 20) == 0
    assert limits.take("k", 1) == 1


def test_keys_have_independent_buckets():
    limits, _ = limiter(rate=10, burst=20)
    limits.take("key-a", 20)
    assert limits.take("key-a", 1) == 1
    assert limits.take("key-b", 20) == 0


def test_a_new_key_starts_with_a_full_bucket_even_late():
    limits, clock = limiter(rate=10, burst=20)
    clock.advance(10_000)
    assert limits.take("late", 20) == 0
    assert limits.take("late", 1) == 1


def test_fractional_rates_round_up_to_whole_seconds():
    limits, _ = limiter(rate=0.5, burst=1)
    limits.take("k", 1)
    assert limits.take("k", 1) == 2
