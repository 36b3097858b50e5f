"""Wire the gateway: settings -> the services behind it -> its own routes, then every service route."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from libs.common.service import create_app
from services.gateway.api import router
from services.gateway.proxy import add_proxied_routes, install_openapi
from services.gateway.routes import service_routes
from services.gateway.runtime import GatewayService
from services.gateway.settings import BACKENDS, GatewaySettings

DESCRIPTION = (
    "The one entry point of shoploop: every service's routes at their own paths (the caller's key checked "
    "once, then passed on with an `X-Request-ID`), plus the gateway's own overview, channels with spend, "
    "health of every service, and the dashboard at `/`."
)


def create_gateway_app(settings: GatewaySettings | None = None, *,
                       transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    service = GatewayService("gateway", settings, None, transport=transport)
    app = create_app(service, routers=[router], title="shoploop gateway", description=DESCRIPTION)
    proxied = add_proxied_routes(app, [route for name in BACKENDS for route in service_routes(name)],
                                 answered_here=router.routes)
    app.state.proxied_routes = proxied
    install_openapi(app, proxied)
    return app
