"""What the pure ASGI middlewares (metrics, request ids) read of an answer as it is sent."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.types import Message, Scope, Send


class AnswerWatch:
    """Passes an answer on (``send``), noting its status (500 until it starts) and adding ``headers`` to it."""

    def __init__(self, send: Send, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.status = 500
        self.started = time.perf_counter()
        self._send = send
        self._headers = list(headers)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._headers:
                message["headers"] = [*message.get("headers", []), *self._headers]
        await self._send(message)

    def seconds(self) -> float:
        """Since the request came in."""
        return time.perf_counter() - self.started


def route_template(scope: Scope) -> str:
    """The matched route's template, never the path itself (a path can hold a person key)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"
