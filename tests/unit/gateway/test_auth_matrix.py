"""SPEC.md "Auth" at the gateway: every route it serves, with every kind of key. The table is generated from
the routes themselves, so a route added to a service is covered here without a new test."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute

from libs.common.auth import parse_api_keys
from libs.common.settings import DEV_API_KEYS
from services.gateway.api import router as gateway_router
from services.gateway.bootstrap import create_gateway_app
from services.gateway.routes import SERVICE_ROUTERS, required_scopes, service_routes
from services.gateway.settings import GatewaySettings

DEV_KEYS = parse_api_keys(DEV_API_KEYS)


def _routes() -> list[tuple[str, str, frozenset[str]]]:
    app = create_gateway_app(GatewaySettings())
    forwarded = [(r.method, r.path, r.scopes) for r in app.state.proxied_routes]
    own = [(method, r.path, required_scopes(r)) for r in gateway_router.routes
           if isinstance(r, APIRoute) and required_scopes(r) for method in r.methods]
    return forwarded + own


ROUTES = _routes()
CREDENTIALS = [None, "not-a-key", *DEV_KEYS]


def _expected(key: str | None, scopes: frozenset[str]) -> int | None:
    if key not in DEV_KEYS:
        return 401
    granted = DEV_KEYS[key]
    return None if "admin" in granted or granted & scopes else 403


def test_the_gateway_serves_every_route_of_every_service():
    served = {(method, path) for method, path, _ in ROUTES}
    for service in SERVICE_ROUTERS:
        for route in service_routes(service):
            assert (route.method, route.path) in served, f"{service} {route.method} {route.path} not served"


def test_every_gateway_route_but_the_dashboard_and_operations_needs_a_key():
    open_paths = {r.path for r in gateway_router.routes if isinstance(r, APIRoute) and not required_scopes(r)}
    assert open_paths == {"/"}


@pytest.mark.parametrize(("method", "path", "scopes"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("key", CREDENTIALS, ids=lambda key: key or "no-key")
async def test_a_key_is_refused_or_passed_on_by_the_scopes_of_the_route(make_gateway, backends, method, path,
                                                                        scopes, key):
    gateway = make_gateway()
    url = re.sub(r"\{[^}]+\}", "x-1", path)
    params = {"from": "2026-05-01", "to": "2026-05-02"}
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    response = await gateway.request(method, url, params=params, headers=headers, content=b"{}")

    expected = _expected(key, scopes)
    if expected is None:
        assert response.status_code not in (401, 403), response.text
        assert backends.requests, "an authorized request reaches the service"
        assert {r.headers.get("authorization") for r in backends.requests} <= {f"Bearer {key}", None}
    else:
        assert response.status_code == expected, response.text
        assert response.json()["code"] == {401: "unauthorized", 403: "forbidden"}[expected]
        assert backends.requests == [], "a refused request never reaches a service"
