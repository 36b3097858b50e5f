"""SPEC.md "Auth" at the gateway, with every kind of key, on every route it serves (generated from its own
route table): refused with 401/403 by the gateway itself without reaching any service, or passed on to the
owning service with the caller's key. tests/integration/test_route_access.py covers the guard's 413s and
body reading for the gateway like for every service."""

from __future__ import annotations

import re

import pytest

from libs.common.auth import parse_api_keys, route_rules
from libs.common.settings import DEV_API_KEYS
from services.gateway.bootstrap import create_gateway_app
from services.gateway.routes import service_routes
from services.gateway.settings import BACKENDS, GatewaySettings

DEV_KEYS = parse_api_keys(DEV_API_KEYS)
_APP = create_gateway_app(GatewaySettings())
RULES = [(method, route.path, rule.scopes)
         for route, rule in route_rules(_APP, default_max_body_bytes=_APP.state.default_max_body_bytes)
         if rule.scopes is not None for method in sorted(set(route.methods or ()) - {"HEAD"})]
CREDENTIALS = [None, "not-a-key", *DEV_KEYS]


def _expected(key: str | None, scopes: tuple[str, ...]) -> int | None:
    if key not in DEV_KEYS:
        return 401
    granted = DEV_KEYS[key]
    return None if "admin" in granted or granted & set(scopes) else 403


def test_the_gateway_serves_every_route_of_every_service_with_the_services_own_scopes():
    served = {(method, path): scopes for method, path, scopes in RULES}
    for service in BACKENDS:
        for route in service_routes(service):
            assert served[route.method, route.path] == route.rule.scopes, (service, route.method, route.path)


@pytest.mark.parametrize(("method", "path", "scopes"), RULES, ids=[f"{m} {p}" for m, p, _ in RULES])
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


def test_reading_the_services_route_tables_takes_none_of_their_files(tmp_path, monkeypatch):
    copy_dir = tmp_path / "funnel-copy"
    monkeypatch.setenv("SHOPLOOP_FUNNEL__FACT_COPY_DIR", str(copy_dir))
    service_routes.cache_clear()
    try:
        assert service_routes("funnel")
    finally:
        service_routes.cache_clear()
    assert not copy_dir.exists()
