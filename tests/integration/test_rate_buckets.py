"""The shared rate limit's SQL form (services/ingest/adapters/rate_buckets.py) equals the token bucket rule
(services/ingest/ratelimit.py) on SQLite and PostgreSQL: the same answers and the same bucket after every
spend, whatever the rate, burst, costs, clock steps (backwards too: another replica's clock) and keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.db import Database
from services.ingest.adapters import rate_buckets
from services.ingest.adapters.rejected import MIGRATIONS, metadata
from services.ingest.ratelimit import Bucket, Rate, retry_after, take


@pytest.fixture
async def database(database_url) -> AsyncIterator[Database]:
    database = Database(database_url, metadata=metadata, migrations=[*MIGRATIONS, rate_buckets.MIGRATION])
    await database.start()
    yield database
    await database.close()


rates = st.builds(Rate.of, st.sampled_from([0.001, 0.5, 1, 3.3, 10, 1000, 50_000, 10_000_000]),
                  st.integers(1, 10_000))
steps = st.lists(st.tuples(st.integers(-2_000_000, 5_000_000), st.integers(0, 2), st.integers(1, 10_000)),
                 min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=rates, steps=steps, start=st.integers(0, 2**50))
async def test_the_sql_bucket_answers_like_the_rule(database, rate, steps, start):
    run = uuid.uuid4().hex
    expected: dict[str, Bucket | None] = {}
    now = start
    for advance, key_index, cost in steps:
        now = max(0, now + advance)
        key = f"{run}-{key_index}"
        cost = min(cost, rate.burst)  # ingest's settings keep a request's events within the burst
        bucket = expected.get(key)
        after = take(bucket, now, rate, cost)
        want = 0 if after is not None else retry_after(bucket, now, rate, cost)
        if after is not None:
            expected[key] = after
        async with database.begin() as connection:
            got = await rate_buckets.spend(connection, key, now, rate, cost)
            stored = await rate_buckets.stored_bucket(connection, key)
        assert got == want, (key, now, cost)
        assert stored == expected.get(key)


async def test_keys_are_stored_as_digests_only(database):
    async with database.begin() as connection:
        await rate_buckets.spend(connection, "s3cret-ingest-key", 10**15, Rate.of(10, 10), 1)
        rows = (await connection.execute(rate_buckets.rate_buckets.select())).all()
    assert [row.key_hash for row in rows] == [rate_buckets.key_hash("s3cret-ingest-key")]
    assert "s3cret" not in repr(rows)
