"""The stack as `make run` starts it (`python -m deploy.embedded`), on free ports and its own data directory, so
that tests never collide with a running `make run` or with each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]


class EmbeddedStack:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.state = data_dir.parent / f"{data_dir.name}-state.json"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPLOOP_")} | {
            # Shorter group sessions: the stack's consumer groups join faster (tests start it more than once).
            "SHOPLOOP_KAFKA__SESSION_TIMEOUT_MS": "1500", "SHOPLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": "150", **env,
        }
        self.launcher: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, str] = {}
        self.output = ""

    async def start(self) -> dict[str, str]:
        self.state.unlink(missing_ok=True)
        self.launcher = subprocess.Popen(
            [sys.executable, "-m", "deploy.embedded", "--free-ports", "--data-dir", str(self.data_dir),
             "--state-file", str(self.state)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        launcher = self.launcher
        await eventually(lambda: self.state.exists() or launcher.poll() is not None, deadline_seconds=90,
                         interval=0.1, what="the stack to be ready")
        assert launcher.poll() is None, launcher.communicate()[0].decode()
        self.urls = json.loads(self.state.read_text())
        return self.urls

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it to the launcher."""
        assert self.launcher is not None
        self.launcher.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 150) -> int:
        assert self.launcher is not None
        self.output = self.launcher.communicate(timeout=timeout)[0].decode()
        return self.launcher.returncode

    def kill(self) -> None:
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGINT)
            try:
                self.launcher.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
