"""Routes answered from the DuckDB copy say 503 with Retry-After while the copy cannot load, instead of
waiting for it, and answer normally once it loads — on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text

from libs.common.db import Database
from services.funnel.adapters.facts import store_facts
from services.funnel.adapters.tables import MIGRATIONS, metadata
from tests.integration.funnel.helpers import facts, running_funnel, view
from tests.support import eventually

DAY = datetime(2026, 3, 2, tzinfo=UTC)
SPAN = {"from": "2026-03-02", "to": "2026-03-03"}


async def _rename_events(database_url: str, old: str, new: str) -> None:
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        async with database.begin() as connection:
            await connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    finally:
        await database.close()


async def test_copy_routes_answer_503_with_retry_after_while_the_first_load_fails_then_recover(
    settings, database_url
):
    """A real failure, no patching: the service starts on a database whose migrations are all recorded but
    whose ``events`` table has been renamed away, so every load attempt fails on the missing table."""
    database = Database(database_url, metadata=metadata, migrations=MIGRATIONS)
    await database.start()
    try:
        async with database.begin() as connection:
            await store_facts(connection, facts([view("ann", DAY + timedelta(hours=1)),
                                                 view("bob", DAY + timedelta(hours=2))]))
    finally:
        await database.close()
    await _rename_events(database_url, "events", "events_aside")

    wait_seconds = 0.5
    # The retries' pause doubles at each failure: bounded here so the recovery below is seen within a second.
    settings = settings.model_copy(update={"fact_copy_wait_seconds": wait_seconds, "fact_copy_retry_max_seconds": 1})
    async with running_funnel(settings, ready_path="/healthz") as funnel:
        client = funnel.client

        async def failed_readiness() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if "failed" in response.json()["checks"]["fact_copy"] else None

        readyz = await eventually(failed_readiness, what="/readyz to report the failed load")
        assert readyz.status_code == 503 and readyz.json()["status"] == "unready"
        assert "not loaded" in readyz.json()["checks"]["fact_copy"], readyz.text

        for path in ("/v1/kpis", "/v1/funnels/default/result"):
            started = time.monotonic()
            response = await client.get(path, params=SPAN)
            took = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "1"
            body = response.json()
            assert set(body) == {"code", "detail"}
            assert body["code"] == "fact_copy_unavailable"
            assert "not loaded" in body["detail"], body  # what is wrong, in words
            # ... but not the exception text (which names the missing table): that is in the log only.
            assert "events" not in body["detail"] and "events" not in readyz.text, body
            assert wait_seconds <= took < wait_seconds + 5, took  # bounded by the setting, not hanging

        # Routes that read the database directly do not depend on the copy.
        assert (await client.get("/v1/funnels")).status_code == 200

        await _rename_events(database_url, "events_aside", "events")

        async def kpis() -> dict | None:
            response = await client.get("/v1/kpis", params=SPAN)
            return response.json() if response.status_code == 200 else None

        answer = await eventually(kpis, what="/v1/kpis to answer once the table is back")
        assert answer["uv"] == 2
        result = await funnel.get("/v1/funnels/default/result", **SPAN)
        assert result["counts"][0] == 2, result
        readyz = await client.get("/readyz")
        assert readyz.status_code == 200 and readyz.json()["checks"]["fact_copy"] == "ok", readyz.text
