"""Request ids (SPEC.md "API surface: gateway"): ``X-Request-ID`` taken from the caller or made, echoed
in the answer, carried by every log line written while the request is handled, and passed on by the
gateway to every service it calls."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from libs.common.answers import AnswerWatch, route_template

HEADER = "x-request-id"
# A caller's id is kept only if it is short and plain: it is written into every log line.
_ACCEPTED = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
current_request_id: ContextVar[str | None] = ContextVar("shoploop_request_id", default=None)
access_log = logging.getLogger("shoploop.access")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str:
    """The caller's id when it is well formed, else a new one."""
    return value if value is not None and _ACCEPTED.match(value) else new_request_id()


class RequestIdMiddleware:
    """Pure ASGI middleware: sets the request id for the request's task, echoes it, logs one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == HEADER.encode()), None)
        request_id = accepted_request_id(given)
        token = current_request_id.set(request_id)
        answer = AnswerWatch(send, [(HEADER.encode(), request_id.encode())])
        try:
            await self.app(scope, receive, answer.send)
        finally:
            # The route's template: erasure leaves no copy of a person key in the logs either.
            access_log.info("request answered", extra={
                "method": scope["method"], "route": route_template(scope), "status": answer.status,
                "duration_ms": round(answer.seconds() * 1000, 2),
            })
            current_request_id.reset(token)
