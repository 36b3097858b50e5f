"""`make run`'s stop (deploy/embedded.py ``_stop``): a service that does not stop after SIGTERM is killed and named,
so the launcher can say the stop was not clean (a SQLite database then keeps its last writes in its -wal file)."""

from __future__ import annotations

import subprocess
import sys

from deploy.embedded import Running, _stop

# A child that says it is ready once its SIGTERM handling is in place, then waits to be stopped.
_CHILD = """
import signal, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""


def _started(name: str, behaviour: str) -> Running:
    process = subprocess.Popen([sys.executable, "-c", _CHILD, behaviour], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return Running(name, "http://127.0.0.1:1", process)


def test_a_service_ignoring_sigterm_is_killed_and_named_and_the_others_stop_on_their_own():
    polite, stubborn = _started("funnel", "polite"), _started("campaigns", "stubborn")
    try:
        killed = _stop([polite, stubborn], None, timeout_seconds=2)
    finally:
        for running in (polite, stubborn):
            if running.process.poll() is None:
                running.process.kill()
    assert killed == ["campaigns"]
    assert polite.process.returncode == -15  # SIGTERM, not SIGKILL
    assert stubborn.process.returncode == -9


def test_services_that_stop_on_sigterm_are_none_killed():
    services = [_started(name, "polite") for name in ("ingest", "funnel")]
    assert _stop(services, None, timeout_seconds=30) == []
    assert [running.process.returncode for running in services] == [-15, -15]
