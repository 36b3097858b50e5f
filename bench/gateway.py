"""Gateway costs on this machine (issue 12; run by `make bench`).

Starts the stack as `make run` does (deploy.embedded, free ports, temporary data), posts the demo's
storefront through the gateway (`make demo` with --days/--customers), waits until it is applied, then:
  1. the added latency of a proxied route: GET /v1/funnels (funnel) and GET /v1/segments (segmentation)
     called on the service directly and through the gateway, interleaved, sequentially;
  2. GET /v1/overview (both KPI periods, the default funnel, lifecycle, RFM, tiers, campaigns in parallel):
     p50/p95 over sequential requests.
Prints a markdown table. Targets (issue 12): proxied overhead < 5 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import embedded_stack, eventually  # noqa: E402

READ = {"Authorization": "Bearer dev-read-key"}


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _time(client: httpx.AsyncClient, url: str, params: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    response = await client.get(url, params=params, headers=READ)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def measure(urls: dict[str, str], requests: int, overview_requests: int, days: int) -> list[str]:
    today = datetime.now(UTC).date()
    span = {"from": (today - timedelta(days=days - 1)).isoformat(), "to": (today + timedelta(days=1)).isoformat()}
    rows = []
    async with httpx.AsyncClient(timeout=60) as client:
        # Cheap answers, so that the gateway's own cost is what differs (a costly query only adds noise).
        for service, path, params in (("funnel", "/v1/funnels", None), ("segmentation", "/v1/segments", None)):
            direct, proxied = [], []
            for _ in range(20):  # warm both paths (connections, caches)
                await _time(client, urls[service] + path, params)
                await _time(client, urls["gateway"] + path, params)
            for _ in range(requests):
                direct.append(await _time(client, urls[service] + path, params))
                proxied.append(await _time(client, urls["gateway"] + path, params))
            size = len((await client.get(urls["gateway"] + path, params=params, headers=READ)).content)
            print(f"  measured {path}", file=sys.stderr, flush=True)
            rows.append(
                f"| GET {path} ({size:,} bytes) | {statistics.median(direct):.2f} | {statistics.median(proxied):.2f} "
                f"| **{statistics.median(proxied) - statistics.median(direct):.2f}** "
                f"| {_quantile(proxied, 0.95) - _quantile(direct, 0.95):.2f} |"
            )
        overview = [await _time(client, urls["gateway"] + "/v1/overview", span) for _ in range(overview_requests)]
    return [
        "| route | direct p50 ms | via gateway p50 ms | added p50 ms | added p95 ms |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"GET /v1/overview ({days} days, {overview_requests} sequential requests): "
        f"p50 {statistics.median(overview):.1f} ms, p95 {_quantile(overview, 0.95):.1f} ms",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per route and path (default 300)")
    parser.add_argument("--overview-requests", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--customers", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, embedded_stack(Path(directory)) as urls:
        demo = subprocess.run([sys.executable, "-m", "deploy.demo", "--gateway", urls["gateway"],
                               "--days", str(args.days), "--customers", str(args.customers)], cwd=ROOT)
        if demo.returncode:
            return demo.returncode

        async def applied() -> bool:
            async with httpx.AsyncClient() as client:
                health = (await client.get(urls["gateway"] + "/v1/health", headers=READ)).json()
            return all(group["lag"] == 0 for service in health["services"]
                       for group in (service.get("consumers") or {}).values())

        asyncio.run(eventually(applied, deadline_seconds=120, what="the demo applied"))
        print("\n".join(asyncio.run(measure(urls, args.requests, args.overview_requests, args.days))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
