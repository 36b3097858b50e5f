"""Every service route served at its own path by the gateway. Each is an API route declaring the service's
own access rule (``requires(scopes, max_body_bytes, basic)``), so the gateway's guard checks the key and
bounds the body exactly as the service does, before the body is read; the request is then forwarded and
the answer streamed back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from libs.common.auth import requires
from libs.common.http import document_error_shape
from services.gateway.adapters.backends import BackendUnavailable
from services.gateway.routes import ProxiedRoute


def _endpoint(proxied: ProxiedRoute) -> Callable[..., Awaitable[Response]]:
    rule = proxied.rule
    access = requires(*(rule.scopes or ()), max_body_bytes=rule.max_body_bytes, basic=rule.basic)

    async def forward(request: Request, _key: str = access) -> Response:
        try:
            return await request.app.state.service.backends.forward(proxied.service, request)
        except BackendUnavailable as exc:
            raise exc.as_api_error() from None

    forward.__name__ = f"{proxied.service}_{proxied.method.lower()}_{proxied.path}"
    return forward


def add_proxied_routes(app: FastAPI, proxied: Iterable[ProxiedRoute],
                       answered_here: Iterable[Any]) -> list[ProxiedRoute]:
    """Add a forwarding route for each service route not ``answered_here`` (the gateway's own routes);
    return those added."""
    own = {(method, route.path) for route in answered_here if isinstance(route, APIRoute)
           for method in route.methods}
    added = []
    for route in proxied:
        if (route.method, route.path) in own:
            continue
        app.router.add_api_route(route.path, _endpoint(route), methods=[route.method], include_in_schema=False)
        added.append(route)
    return added


def install_openapi(app: FastAPI, proxied: list[ProxiedRoute]) -> None:
    """/docs shows the gateway's own routes and every forwarded one with its service's own schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        service_routes = {id(route.route): route.route for route in proxied if route.route is not None}
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=[*app.routes, *_only_forwarded(service_routes.values(), proxied)])
        for route in proxied:
            operations = schema["paths"].setdefault(route.path.replace(":path}", "}"), {})
            scopes = list(route.rule.scopes or ())
            if route.route is None:  # the service's package is not installed here: its SPEC.md route
                operations[route.method.lower()] = {
                    "tags": [route.service], "summary": f"{route.service}: {route.method} {route.path}",
                    "security": [{"api_key": scopes}],
                    "responses": {"200": {"description": f"the {route.service} service's answer"}},
                }
            operation = operations.get(route.method.lower())
            if operation is not None:
                operation["description"] = (operation.get("description", "") + "\n\n" +
                                            f"Served by **{route.service}**; key scope: "
                                            f"{' or '.join(scopes)} (admin implies all).").strip()
        app.openapi_schema = document_error_shape(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _only_forwarded(routes: Iterable[APIRoute], proxied: list[ProxiedRoute]) -> list[APIRoute]:
    """A service route whose methods are all answered by the gateway itself is documented as the gateway's."""
    forwarded = {(route.method, route.path) for route in proxied}
    return [route for route in routes if any((method, route.path) in forwarded for method in route.methods)]
