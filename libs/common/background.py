"""A service's background loop (the campaigns scheduler, segment membership): work kept in the service's database
and published on the broker, started once the broker is reachable, woken early by ``wake``, stopped after the work
in hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libs.common.db import Database
    from libs.common.kafka import Publisher

_FIRST_RETRY_SECONDS = 0.2
_LAST_RETRY_SECONDS = 10.0

Clock = Callable[[], datetime]  # what a loop asks for the time (tests pass a fixed or stepping one)


class BackgroundLoop:
    """``start`` runs ``_loop`` in a task once ``ready`` returns; ``_sleep`` ends early on ``wake`` or ``stop``."""

    def __init__(self, name: str, *, database: Database, publisher: Publisher, clock: Clock) -> None:
        self.database = database
        self.publisher = publisher
        self.clock = clock
        self._name = name
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._retry_seconds = _FIRST_RETRY_SECONDS

    def wake(self, *_: object) -> None:
        """Run a pass soon."""
        self._wake.set()

    def start(self, ready: Callable[[], Awaitable[None]]) -> None:
        self._task = asyncio.create_task(self._run(ready), name=self._name)

    async def stop(self) -> None:
        """Let the pass in hand finish and commit, then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is None:
            return
        if not self._connected:
            self._task.cancel()  # still waiting for the broker: nothing in hand
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self, ready: Callable[[], Awaitable[None]]) -> None:
        await ready()
        self._connected = True
        await self._loop()

    async def _loop(self) -> None:
        """The passes, until ``self._stopping`` is set."""
        raise NotImplementedError

    def _succeeded(self) -> None:
        """A pass went through: the next failure waits the shortest time again."""
        self._retry_seconds = _FIRST_RETRY_SECONDS

    async def _wait_after_failure(self) -> None:
        """Before the next try after a failed pass: 0.2 s, doubling on each failure in a row up to 10 s."""
        await self._sleep(self._retry_seconds)
        self._retry_seconds = min(self._retry_seconds * 2, _LAST_RETRY_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        """Until woken (new work, stop) or ``seconds`` have passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
