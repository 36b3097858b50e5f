"""A service that refuses to start says why without printing a secret (SPEC.md "Auth"): a mistyped
SHOPLOOP_API_KEYS entry is named by position, never by its text; the published dev keys are refused
everywhere but SHOPLOOP_ENV=local."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service_apps import service_apps

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-0f9e8d7c"


def start(service: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Start ``python -m services.<service>`` (it must fail before serving) and collect all it printed."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
                   f"SHOPLOOP_{service.upper()}__PORT": "1", **env}
    return subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


SERVICES = [service.name for service in service_apps()]


# Every malformed shape is checked on parse_api_keys itself (tests/unit/common/test_auth.py); here, that a
# process stops on one (rather than serving, or restarting workers forever) and prints no key.
@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(("env", "keys"), [("local", f"{SECRET}:raed"), ("production", f"ops-key:admin;{SECRET}")])
def test_a_bad_api_key_setting_stops_the_service_without_echoing_the_key(service, env, keys, tmp_path):
    finished = start(service, SHOPLOOP_ENV=env, SHOPLOOP_API_KEYS=keys,
                     **{f"SHOPLOOP_{service.upper()}__DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"})
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    assert "SHOPLOOP_API_KEYS entry" in output, output[-2000:]
    assert SECRET not in output


@pytest.mark.parametrize("env", ["test", "staging", "production"])
def test_the_dev_keys_stop_a_service_outside_local_mode(env, tmp_path):
    finished = start("ingest", SHOPLOOP_ENV=env,
                     SHOPLOOP_INGEST__DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert finished.returncode != 0
    assert f"SHOPLOOP_ENV={env}: refusing to start with the embedded stack's development API keys" in finished.stderr
