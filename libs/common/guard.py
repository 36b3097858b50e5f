"""The guard in front of every service's routes (SPEC.md "Auth": a request is authenticated before its body
is read): a pure ASGI middleware that finds the route a request will reach, answers 401/403 from its headers
and 413 from its Content-Length without touching the body, and counts the body as the app reads it.

Each route's rule is the one it declares (``libs/common/auth.py`` ``requires`` / ``open_route``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import RouteContext
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.auth import (
    API_KEY_SCOPE_FIELD,
    CHALLENGE,
    GUARDED_ROUTE_SCOPE_FIELD,
    SEGMENT_CHALLENGE,
    ApiKeys,
    RouteRule,
    key_from_authorization,
    route_rules,
)
from libs.common.http import ApiError, JsonResponse

DEFAULT_MAX_BODY_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body read so far passes the route's limit (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


def too_large(limit: int, declared: int | None = None) -> ApiError:
    detail = (f"request body is {declared} bytes; the limit is {limit} bytes" if declared is not None
              else f"request body exceeds the limit of {limit} bytes")
    return ApiError(413, "request_too_large", detail)


async def _answer(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    response = JsonResponse({"code": error.code, "detail": error.detail}, status_code=error.status,
                            headers=error.headers)
    await response(scope, receive, send)


class GuardMiddleware:
    """Authenticate, authorize and bound the body of each request by its route's declared rule."""

    def __init__(self, app: ASGIApp, *, api_keys: ApiKeys, default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 ) -> None:
        self.app = app
        self.api_keys = api_keys
        self.default_max_body_bytes = default_max_body_bytes
        self._rules: list[tuple[RouteContext, RouteRule]] | None = None

    def rules(self, application: FastAPI) -> list[tuple[RouteContext, RouteRule]]:
        """The route table, made at the first request (the lifespan has checked it by then: ``check_routes``)."""
        if self._rules is None:
            self._rules = route_rules(application, default_max_body_bytes=self.default_max_body_bytes)
        return self._rules

    def _rule_for(self, scope: Scope) -> tuple[RouteContext, RouteRule] | None:
        for route, rule in self.rules(scope["app"]):
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route, rule
        return None  # the router answers 404 / 405 without reading the body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = self._rule_for(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, rule = found
        scope["route"] = route.original_route  # metrics label the answer by route even when the guard gives it
        scope[GUARDED_ROUTE_SCOPE_FIELD] = route.original_route
        headers = Headers(scope=scope)
        if rule.scopes is not None:
            key = key_from_authorization(headers.get("authorization", ""), basic=rule.basic)
            try:
                scope[API_KEY_SCOPE_FIELD] = self.api_keys.authorize(
                    key, *rule.scopes, challenge=SEGMENT_CHALLENGE if rule.basic else CHALLENGE)
            except ApiError as error:
                await _answer(error, scope, receive, send)
                return
        limit = rule.max_body_bytes
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            await _answer(too_large(limit, declared), scope, receive, send)
            return
        await self._bounded(scope, receive, send, limit)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as error:
            # Normally the app's handler (install_body_limit_handler) answers; this covers an app without it.
            if started:
                raise
            await _answer(too_large(error.limit), scope, receive, send)


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def install_guard(app: FastAPI, api_keys: ApiKeys, *, default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Put the guard in front of ``app``'s routes and answer a body over the limit as ``{code, detail}`` 413."""
    app.add_middleware(GuardMiddleware, api_keys=api_keys, default_max_body_bytes=default_max_body_bytes)
    app.state.default_max_body_bytes = default_max_body_bytes

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_request: Any, error: BodyTooLarge) -> JsonResponse:
        problem = too_large(error.limit)
        return JsonResponse({"code": problem.code, "detail": problem.detail}, status_code=413)


def check_routes(app: FastAPI) -> None:
    """Raise ValueError if a route of ``app`` declares no access rule (call before serving)."""
    route_rules(app, default_max_body_bytes=getattr(app.state, "default_max_body_bytes", DEFAULT_MAX_BODY_BYTES))
