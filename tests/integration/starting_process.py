"""One replica of a service for the concurrent start test: it starts the service as its process would, once per
line read on stdin, and answers each with one JSON line once /readyz answered 200 (or why not).

Usage: python -m tests.integration.starting_process SERVICE
Each input line: ``{"database_url": ..., "bootstrap_servers": ...}``; each output line:
``{"ready": true, "seconds": ...}`` or ``{"ready": false, "error": ...}``. The process imports once and
starts many times, so that ten rounds of many processes fit in the test's time.
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback

import orjson

from libs.common.broker import SESSION_TIMEOUT_MS
from libs.common.settings import CommonSettings, KafkaSettings
from services.funnel.bootstrap import create_funnel_app
from services.funnel.settings import FunnelSettings
from services.ingest.bootstrap import create_ingest_app
from services.ingest.settings import IngestSettings
from services.segmentation.bootstrap import create_segmentation_app
from services.segmentation.settings import SegmentationSettings
from tests.support import serve_app

APPS = {
    "ingest": (IngestSettings, create_ingest_app),
    "funnel": (FunnelSettings, create_funnel_app),
    "segmentation": (SegmentationSettings, create_segmentation_app),
}


async def start_once(service: str, database_url: str, bootstrap_servers: str) -> dict:
    settings_class, create_app = APPS[service]
    # The embedded broker's sessions, as everywhere else: with 15 processes starting on two cores, a shorter one
    # lets a member that missed a beat under load be evicted and the group rebalance again and again.
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_partitions=4, session_timeout_ms=SESSION_TIMEOUT_MS,
                          heartbeat_interval_ms=SESSION_TIMEOUT_MS // 10)
    started = time.monotonic()
    try:
        settings = settings_class(database_url=database_url, common=CommonSettings(kafka=kafka))
        async with serve_app(create_app(settings)):  # returns once /readyz answered 200
            return {"ready": True, "seconds": round(time.monotonic() - started, 2)}
    except BaseException as exc:
        return {"ready": False, "error": "".join(traceback.format_exception(exc))[-3000:]}


async def main(service: str) -> None:
    loop = asyncio.get_running_loop()
    print(orjson.dumps({"hello": service}).decode(), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        request = orjson.loads(line)
        answer = await start_once(service, request["database_url"], request["bootstrap_servers"])
        print(orjson.dumps(answer).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
