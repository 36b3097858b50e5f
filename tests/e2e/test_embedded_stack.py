"""The stack as a user runs it: `python -m deploy.embedded` (what `make run` calls), on free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from libs.common.events import Event
from libs.common.kafka import EVENTS_TOPIC
from tests.support import eventually, read_topic

ROOT = Path(__file__).resolve().parents[2]


async def test_embedded_stack_serves_events_and_stops_cleanly_on_interrupt(tmp_path):
    state = tmp_path / "state.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPLOOP_")}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "deploy.embedded", "--free-ports", "--data-dir", str(tmp_path / "data"),
         "--state-file", str(state)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        await eventually(lambda: state.exists() or launcher.poll() is not None, deadline_seconds=60,
                         what="the stack to be ready")
        assert launcher.poll() is None, launcher.stdout.read().decode()
        urls = json.loads(state.read_text())
        async with httpx.AsyncClient(base_url=urls["ingest"]) as client:
            response = await client.post(
                "/v1/events", headers={"Authorization": "Bearer dev-ingest-key"},
                json={"event_id": "e2e-1", "type": "view", "user_id": "u-1",
                      "occurred_at": "2026-05-01T10:00:00+08:00", "product": {"product_id": "sku-1"}},
            )
            assert response.status_code == 200
            assert response.json()["accepted"] == 1
        records = await read_topic(urls["broker"], EVENTS_TOPIC, count=1)
        assert Event.from_json(records[0].value).event_id == "e2e-1"
    finally:
        launcher.send_signal(signal.SIGINT)
        output = launcher.communicate(timeout=60)[0].decode()
    assert launcher.returncode == 0, output
    assert "shoploop is running" in output
    assert "dev-ingest-key" in output
    assert (tmp_path / "data" / "ingest.db").exists()
