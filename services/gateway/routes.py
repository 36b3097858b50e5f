"""The routes the gateway serves for the services behind it, each with the scopes its service requires.

The table is read from the services' own routers, so the gateway checks a key against exactly the scope
table the service itself applies (SPEC.md "Auth"), and its OpenAPI document shows the services' own
schemas. A service whose package is not installed (campaigns, while it is being built) is served from
the SPEC.md route list below instead, without schemas.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi.routing import APIRoute

# Module holding each service's routes (a FastAPI ``router``).
SERVICE_ROUTERS = {
    "ingest": "services.ingest.api",
    "funnel": "services.funnel.api",
    "segmentation": "services.segmentation.api",
    "campaigns": "services.campaigns.api",
}
# SPEC.md "API surface: campaigns": used only while services.campaigns.api cannot be imported.
_SPEC_CAMPAIGNS_ROUTES = [
    ("POST", "/v1/campaigns", {"campaigns"}),
    ("GET", "/v1/campaigns", {"read"}),
    ("GET", "/v1/campaigns/{campaign_id}", {"read"}),
    ("PATCH", "/v1/campaigns/{campaign_id}", {"campaigns"}),
    ("POST", "/v1/campaigns/{campaign_id}/activate", {"campaigns"}),
    ("POST", "/v1/campaigns/{campaign_id}/pause", {"campaigns"}),
    ("POST", "/v1/campaigns/{campaign_id}/complete", {"campaigns"}),
    ("GET", "/v1/campaigns/{campaign_id}/report", {"read"}),
    ("GET", "/v1/campaigns/{campaign_id}/assignments", {"read"}),
    ("GET", "/v1/campaigns/{campaign_id}/touches", {"read"}),
    ("POST", "/v1/coupons/validate", {"ingest", "campaigns"}),
    ("POST", "/v1/spend", {"campaigns"}),
    ("GET", "/v1/spend", {"read"}),
]


@dataclass(frozen=True)
class ProxiedRoute:
    service: str
    method: str
    path: str
    # A key holding any of these (or admin) may call the route.
    scopes: frozenset[str]
    # The service's own route, for the OpenAPI document; None when taken from the SPEC list.
    route: APIRoute | None = None


def required_scopes(route: APIRoute) -> frozenset[str]:
    """The scopes a service route's ``require_scope`` dependencies name (any one of them suffices)."""
    scopes: set[str] = set()
    for dependant in _dependants(route.dependant):
        call = dependant.call
        if call is not None and getattr(call, "__qualname__", "").startswith("require_scope."):
            scopes.add(inspect.getclosurevars(call).nonlocals["scope"])
    return frozenset(scopes)


def _dependants(dependant) -> Iterator:  # type: ignore[no-untyped-def]
    for child in dependant.dependencies:
        yield child
        yield from _dependants(child)


def service_routes(service: str) -> list[ProxiedRoute]:
    """Every route ``service`` serves, with its scopes; a route without any is refused (the gateway would
    otherwise serve it to anyone)."""
    try:
        module = importlib.import_module(SERVICE_ROUTERS[service])
    except ModuleNotFoundError:
        if service != "campaigns":
            raise
        return [ProxiedRoute(service, method, path, frozenset(scopes)) for method, path, scopes in _SPEC_CAMPAIGNS_ROUTES]
    routes = []
    for route in module.router.routes:
        if not isinstance(route, APIRoute):
            continue
        scopes = required_scopes(route)
        if not scopes:
            raise RuntimeError(f"{service} {route.path}: no scope found; the gateway will not serve it unchecked")
        routes.extend(ProxiedRoute(service, method, route.path, scopes, route) for method in sorted(route.methods))
    return routes
