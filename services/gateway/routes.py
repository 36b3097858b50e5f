"""The routes the gateway serves for the services behind it, each with the access rule its service declares.

The table is read from each service's own app (its ``requires(...)`` declarations and body limits, as the
guard of that service applies them, ``libs/common/auth.py`` ``route_rules``), so the gateway checks a key and
bounds a body exactly as the service itself does, and its OpenAPI document shows the services' own schemas.
A service whose package is not installed (campaigns, while it is being built) is served from the SPEC.md
route list below instead, without schemas.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass

from fastapi.routing import APIRoute

from libs.common.auth import RouteRule, route_rules
from libs.common.guard import DEFAULT_MAX_BODY_BYTES
from libs.common.settings import ServiceSettings

# SPEC.md "API surface: campaigns": used only while services.campaigns cannot be imported.
_SPEC_CAMPAIGNS_ROUTES = [
    ("POST", "/v1/campaigns", ("campaigns",)),
    ("GET", "/v1/campaigns", ("read",)),
    ("GET", "/v1/campaigns/{campaign_id}", ("read",)),
    ("PATCH", "/v1/campaigns/{campaign_id}", ("campaigns",)),
    ("POST", "/v1/campaigns/{campaign_id}/activate", ("campaigns",)),
    ("POST", "/v1/campaigns/{campaign_id}/pause", ("campaigns",)),
    ("POST", "/v1/campaigns/{campaign_id}/complete", ("campaigns",)),
    ("GET", "/v1/campaigns/{campaign_id}/report", ("read",)),
    ("GET", "/v1/campaigns/{campaign_id}/assignments", ("read",)),
    ("GET", "/v1/campaigns/{campaign_id}/touches", ("read",)),
    ("POST", "/v1/coupons/validate", ("ingest", "campaigns")),
    ("POST", "/v1/spend", ("campaigns",)),
    ("GET", "/v1/spend", ("read",)),
]


@dataclass(frozen=True)
class ProxiedRoute:
    service: str
    method: str
    path: str
    rule: RouteRule
    # The service's own route, for the OpenAPI document; None when taken from the SPEC list.
    route: APIRoute | None = None


def _settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{service}.settings")
    (found,) = [value for value in vars(module).values()
                if inspect.isclass(value) and issubclass(value, ServiceSettings) and value is not ServiceSettings
                and value.__module__ == module.__name__]
    return found


@functools.cache
def service_routes(service: str) -> tuple[ProxiedRoute, ...]:
    """Every keyed route ``service`` serves, with its rule: its app is built (not started) from its settings
    as this process's environment gives them, and asked for the rules its guard applies."""
    try:
        bootstrap = importlib.import_module(f"services.{service}.bootstrap")
    except ModuleNotFoundError:
        if service != "campaigns":
            raise
        return tuple(ProxiedRoute(service, method, path, RouteRule(scopes, DEFAULT_MAX_BODY_BYTES))
                     for method, path, scopes in _SPEC_CAMPAIGNS_ROUTES)
    factory = getattr(bootstrap, f"create_{service}_app")
    settings_class = _settings_class(service)
    # Built only to read its route table (never started): nothing it keeps is given a place of its own, so
    # the gateway cannot take a service's files (the funnel's copy directory, say) even when the environment
    # names them.
    no_storage = {name: None for name in settings_class.model_fields if name.endswith("_dir")}
    app = factory(settings_class(database_url="sqlite+aiosqlite:///:memory:", **no_storage))
    routes = []
    for route, rule in route_rules(app, default_max_body_bytes=app.state.default_max_body_bytes):
        if rule.scopes is None:
            continue  # the operations and documentation routes: the gateway answers its own
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            routes.append(ProxiedRoute(service, method, route.path, rule, route.original_route))
    return tuple(routes)
