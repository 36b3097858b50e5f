"""What the campaigns routes cost around their queries (issue 10: routes render declared models): p50/p95 of the
JSON routes whose answers are largest, on SQLite, in process (httpx's ASGI transport: no sockets, no broker).

Seeded with bulk SQL: one campaign with N assignments (a fifth in the holdout) and a touch for each other one,
N spend entries and 100 campaigns; then sequential calls of: a page of 1,000 touches, of 1,000 assignments, of
100 campaigns, of 1,000 spend entries, and the report (running totals). Not a test; prints a markdown table.

Run: ``python bench/campaigns_api.py`` (``--size``, ``--calls``). To compare with another revision, copy this file
and bench/campaigns.py (its timing and seeding helpers) into that revision's tree (``git archive REV | tar -x -C
/tmp/rev``) and run the copy there: it imports the tree it is in.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import campaigns as campaigns_bench  # noqa: E402
from libs.common.events import epoch_micros  # noqa: E402
from libs.common.settings import CommonSettings, KafkaSettings  # noqa: E402
from services.campaigns.adapters import report_state  # noqa: E402
from services.campaigns.adapters.tables import assignments, campaigns, spend, touches  # noqa: E402
from services.campaigns.bootstrap import create_campaigns_app  # noqa: E402
from services.campaigns.settings import CampaignsSettings  # noqa: E402

WRITE = campaigns_bench.WRITE
CAMPAIGN = {"name": "bench api", "audience": {"kind": "segment_entered", "segment_id": "rfm:champion"},
            "offer": {"kind": "coupon", "percent_off": 10}, "variants": [{"name": "a", "split_bp": 8000}],
            "holdout_bp": 2000, "webhook_url": "http://127.0.0.1:9/hook"}


async def _seed_rows(database, table, rows: list[dict]) -> None:
    await campaigns_bench.seed(database, table, tuple(rows[0]), [tuple(row.values()) for row in rows])


async def run(size: int, calls: int) -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as directory:
        common = CommonSettings(env="local", kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"))
        app = create_campaigns_app(CampaignsSettings(database_url=f"sqlite+aiosqlite:///{directory}/bench.db",
                                                     common=common))
        database = app.state.service.database
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://campaigns", timeout=60) as client:
            campaign_id = (await client.post("/v1/campaigns", headers=WRITE, json=CAMPAIGN)).json()["campaign_id"]
            base = epoch_micros(datetime.now(UTC) - timedelta(days=3))
            await _seed_rows(database, assignments, [
                {"campaign_id": campaign_id, "person_key": f"p-{n}", "variant": "holdout" if n % 5 == 0 else "a",
                 "assigned_us": base + n} for n in range(size)])
            await _seed_rows(database, touches, [
                {"touch_id": f"msg_{n:08d}", "campaign_id": campaign_id, "person_key": f"p-{n}", "variant": "a",
                 "coupon_code": f"CODE{n:012d}", "status": "delivered", "created_us": base + n,
                 "delivered_us": base + n + 1000, "attempts": 1, "next_attempt_us": None, "last_error": None}
                for n in range(size) if n % 5])
            await _seed_rows(database, spend, [
                {"source": f"source-{n % 50}", "day": (datetime(2026, 1, 1) + timedelta(days=n // 50)).date()
                 .isoformat(), "amount_cents": 1234 + n, "updated_us": base} for n in range(size)])
            await _seed_rows(database, campaigns, [
                {**{column.name: None for column in campaigns.columns}, **_stored_campaign(campaign_id, n, base)}
                for n in range(100)])
            async with database.begin() as connection:
                await connection.run_sync(report_state.rebuild)
            last_day = (datetime(2026, 1, 1) + timedelta(days=size // 50 + 1)).date().isoformat()
            prefix = f"/v1/campaigns/{campaign_id}"
            timed = campaigns_bench.timed_gets
            measured = {
                "touches, a page of 1,000": await timed(client, f"{prefix}/touches", calls, limit="1000"),
                "assignments, a page of 1,000": await timed(client, f"{prefix}/assignments", calls, limit="1000"),
                "campaigns, a page of 100": await timed(client, "/v1/campaigns", calls, limit="100"),
                "spend, a page of 1,000": await timed(client, "/v1/spend", calls, limit="1000",
                                                      **{"from": "2026-01-01", "to": last_day}),
                "report (running totals)": await timed(client, f"{prefix}/report", calls),
            }
    return [(route, f"{statistics.median(t) * 1000:,.1f} ms", f"{campaigns_bench.p95(t) * 1000:,.1f} ms")
            for route, t in measured.items()]


def _stored_campaign(template_id: str, n: int, base: int) -> dict:
    return {"campaign_id": f"cmp_bench_{n:04d}", "name": f"bench {n}", "status": "draft",
            "audience": '{"kind":"segment_entered","segment_id":"rfm:champion","send_at":null,"hours":null}',
            "audience_kind": "segment_entered", "segment_id": "rfm:champion",
            "offer": '{"kind":"coupon","percent_off":"10","amount_off":null,"min_spend":"50.00",'
                     '"expires_in_days":14,"per_person_limit":1}',
            "variants": '[{"name":"a","split_bp":8000,"message":"hello"}]', "holdout_bp": 2000, "window_days": 7,
            "per_touch_cost_cents": 5, "budget_cents": 100000, "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "whsec_x", "scheduled_sent": False, "created_us": base + n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="assignments and spend entries")
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # no broker on purpose: its warnings are not the figures
    rows = asyncio.run(run(args.size, args.calls))
    print(f"\n| route (SQLite, {args.size:,} assignments, {args.calls} calls) | p50 | p95 |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
