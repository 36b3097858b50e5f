"""The embedded stack's view of the broker's memory: read from /proc, and `make run` warns before its budget."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from deploy.embedded import BrokerMemoryWatch, EmbeddedSettings
from libs.common.broker import machine_memory_bytes, resident_bytes


def test_resident_memory_is_read_for_a_live_process_and_none_for_a_gone_one():
    assert resident_bytes(os.getpid()) > 10 * 2**20  # this interpreter with pytest loaded
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert resident_bytes(gone.pid) is None
    assert machine_memory_bytes() > resident_bytes(os.getpid())


def _watch(share: float, warn_at: float) -> BrokerMemoryWatch:
    # "The broker" is this process: its resident memory is known to be tens of MiB.
    broker = SimpleNamespace(process=SimpleNamespace(pid=os.getpid()))
    return BrokerMemoryWatch(broker, EmbeddedSettings(broker_memory_share=share, broker_memory_warn_at=warn_at))


def test_make_run_warns_once_the_broker_passes_the_warning_fraction_of_its_budget(capsys):
    rss = resident_bytes(os.getpid())
    # A budget of twice the current size: at 50% of it, so a warning at 0.4 and none at 0.9.
    share = 2 * rss / machine_memory_bytes()
    _watch(share, warn_at=0.9).check()
    assert capsys.readouterr().err == ""
    watch = _watch(share, warn_at=0.4)
    watch.check()
    warning = capsys.readouterr().err
    assert "embedded broker holds" in warning and "more events fit" in warning
    watch.checked = 0  # the next look, 5 s later: same level, no second warning
    watch.check()
    assert capsys.readouterr().err == ""
