"""Every service route served at its own path by the gateway: the key checked once against the route's
scopes, then the request forwarded as it came and the answer streamed back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from libs.common.auth import ApiKeys, key_from_headers
from libs.common.http import ApiError
from services.gateway.adapters.backends import BackendUnavailable, BodyTooLarge
from services.gateway.routes import ProxiedRoute


def authorize_any(keys: ApiKeys, key: str | None, scopes: frozenset[str]) -> None:
    """401 for a missing or unknown key; 403 unless it holds one of ``scopes`` (or admin)."""
    refusal: ApiError | None = None
    for scope in sorted(scopes):
        try:
            keys.authorize(key, scope)
            return
        except ApiError as error:
            if error.status == 401:
                raise
            refusal = error
    if len(scopes) > 1:
        raise ApiError(403, "forbidden", f"this API key lacks all of the scopes {', '.join(sorted(scopes))}")
    assert refusal is not None
    raise refusal


def _endpoint(proxied: ProxiedRoute) -> Callable[[Request], Awaitable[Response]]:
    async def forward(request: Request) -> Response:
        # Before the body is read: an unknown key never gets to send one.
        authorize_any(request.app.state.api_keys, key_from_headers(request), proxied.scopes)
        service = request.app.state.service
        try:
            return await service.backends.forward(proxied.service, request)
        except BackendUnavailable as exc:
            raise exc.as_api_error() from None
        except BodyTooLarge:
            limit = service.settings.max_body_bytes
            raise ApiError(413, "payload_too_large", f"request body over the gateway's {limit} bytes") from None

    forward.__name__ = f"{proxied.service}_{proxied.method.lower()}_{proxied.path}"
    return forward


def add_proxied_routes(app: FastAPI, proxied: Iterable[ProxiedRoute],
                       answered_here: Iterable[Any]) -> list[ProxiedRoute]:
    """Add a forwarding route for each service route not ``answered_here`` (the gateway's own routes);
    return those added."""
    own = {(method, route.path) for route in answered_here if isinstance(route, Route)
           for method in (route.methods or ())}
    added = []
    for route in proxied:
        if (route.method, route.path) in own:
            continue
        app.router.routes.append(Route(route.path, _endpoint(route), methods=[route.method],
                                       include_in_schema=False))
        added.append(route)
    return added


def install_openapi(app: FastAPI, proxied: list[ProxiedRoute]) -> None:
    """/docs shows the gateway's own routes and every forwarded one with its service's own schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        service_routes: dict[int, APIRoute] = {}
        for route in proxied:
            if route.route is not None:
                service_routes[id(route.route)] = route.route
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=[*app.routes, *_only_forwarded(service_routes.values(), proxied)])
        for route in proxied:
            operations = schema["paths"].setdefault(route.path, {})
            if route.route is None:  # the service's package is not installed here: its SPEC.md route
                operations[route.method.lower()] = {
                    "tags": [route.service], "summary": f"{route.service}: {route.method} {route.path}",
                    "responses": {"200": {"description": f"the {route.service} service's answer"}},
                }
            operation = operations.get(route.method.lower())
            if operation is not None:
                operation["description"] = (operation.get("description", "") + "\n\n" +
                                            f"Served by **{route.service}**; key scope: "
                                            f"{' or '.join(sorted(route.scopes))} (admin implies all).").strip()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _only_forwarded(routes: Iterable[APIRoute], proxied: list[ProxiedRoute]) -> list[APIRoute]:
    """A service route whose methods are all answered by the gateway itself is documented as the gateway's."""
    forwarded = {(route.method, route.path) for route in proxied}
    return [route for route in routes if any((method, route.path) in forwarded for method in route.methods)]
