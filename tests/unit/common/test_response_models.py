"""Issue 10, generated from every service app's route table (tests/service_apps.py): each route that answers JSON
declares the model of its answer, so that /docs says what it returns and the schemathesis fuzz
(tests/integration/test_openapi_fuzz.py) can hold every answer to it. A new route or a new service is covered
without editing this file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel

from libs.common.http import JsonResponse
from tests.service_apps import service_apps


@dataclass(frozen=True)
class JsonRoute:
    service: str
    route: RouteContext

    def __str__(self) -> str:
        return f"{self.service} {','.join(sorted(self.route.methods - {'HEAD'}))} {self.route.path}"


def answers_json(route: RouteContext) -> bool:
    """Whether the route's answer is a JSON body: its response class is a JSON one and its status is not 204."""
    response_class = route.response_class
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value
    return issubclass(response_class, JSONResponse) and route.status_code != 204


def json_routes(service: str, app: FastAPI) -> Iterator[JsonRoute]:
    """The app's own routes answering JSON; a route the gateway forwards is its service's, checked there."""
    forwarded = {(proxied.method, proxied.path) for proxied in getattr(app.state, "proxied_routes", ())}
    for route in iter_route_contexts(app.router.routes):  # routers' included routes as the app serves them
        if not isinstance(route.original_route, APIRoute) or not answers_json(route):
            continue
        if all((method, route.path) in forwarded for method in route.methods - {"HEAD"}):
            continue
        yield JsonRoute(service, route)


def declares_a_model(route: RouteContext) -> bool:
    """A pydantic model, not the ``dict[str, Any]`` FastAPI takes from a return annotation."""
    model = route.response_model
    return isinstance(model, type) and issubclass(model, BaseModel)


CASES = [case for service in service_apps()
         for case in json_routes(service.name, service.build("sqlite+aiosqlite:///:memory:"))]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_route_answering_json_declares_its_response_model(case: JsonRoute):
    assert declares_a_model(case.route), f"{case}: its response_model is {case.route.response_model!r}"


def test_the_table_holds_every_service_and_leaves_out_only_what_answers_no_json():
    assert {case.service for case in CASES} == {service.name for service in service_apps()}
    listed = {str(case) for case in CASES}
    # What issue 10 found without a model, the operations routes, and the gateway's own routes are listed...
    for expected in ("campaigns GET /v1/campaigns/{campaign_id}/report", "campaigns POST /v1/spend",
                     "funnel GET /healthz", "segmentation GET /readyz", "gateway GET /v1/overview"):
        assert expected in listed
    # ...not the routes answering no JSON (a 204, the metrics text, the dashboard) nor the gateway's forwarded ones.
    for left_out in ("funnel DELETE /v1/funnels/{funnel_id}", "ingest GET /metrics", "gateway GET /",
                     "gateway GET /dashboard/dashboard.js", "gateway GET /v1/campaigns/{campaign_id}/report"):
        assert left_out not in listed


def test_a_json_route_without_a_model_is_found():
    class Answer(BaseModel):
        ok: bool

    app = FastAPI(default_response_class=JsonResponse)

    @app.get("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/modelled", response_model=Answer)
    async def modelled() -> Answer:
        return Answer(ok=True)

    @app.get("/text", response_class=Response)
    async def text() -> Response:
        return Response("ok")

    @app.delete("/gone", status_code=204)
    async def gone() -> Response:
        return Response(status_code=204)

    routes = {case.route.path: declares_a_model(case.route) for case in json_routes("x", app)}
    assert routes == {"/bare": False, "/modelled": True}
