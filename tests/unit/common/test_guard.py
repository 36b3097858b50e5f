"""The guard and the route's declared rule agree, or the route refuses: a route's dependency serves only a key
the guard checked for that very route (libs/common/auth.py, libs/common/guard.py)."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from libs.common.auth import API_KEY_SCOPE_FIELD, GUARDED_ROUTE_SCOPE_FIELD, Access, ApiKeys, requires
from libs.common.guard import install_guard
from libs.common.http import ApiError, install_error_handler

KEYS = ApiKeys("k-read:read;k-shop:ingest")


def app_with(*, guarded: bool) -> FastAPI:
    app = FastAPI()
    install_error_handler(app)
    if guarded:
        install_guard(app, KEYS, default_max_body_bytes=1024)

    @app.get("/v1/figures")
    async def figures(key: Annotated[str, requires("read")]) -> dict:
        return {"key": key}

    return app


async def get(app: FastAPI, key: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/v1/figures", headers={"Authorization": f"Bearer {key}"})


async def test_the_guard_hands_the_checked_key_to_the_route():
    response = await get(app_with(guarded=True), "k-read")
    assert (response.status_code, response.json()) == (200, {"key": "k-read"})
    assert (await get(app_with(guarded=True), "k-shop")).status_code == 403


async def test_without_the_guard_a_route_refuses_even_a_good_key():
    response = await get(app_with(guarded=False), "k-read")
    assert response.status_code == 401


async def test_a_key_checked_for_another_route_is_refused():
    route, other = object(), object()
    scope = {"type": "http", "headers": [], API_KEY_SCOPE_FIELD: "k-read", GUARDED_ROUTE_SCOPE_FIELD: other,
             "route": route}
    with pytest.raises(ApiError) as error:
        await Access("read")(Request(scope))
    assert error.value.status == 401
    assert await Access("read")(Request(scope | {GUARDED_ROUTE_SCOPE_FIELD: route})) == "k-read"


@pytest.mark.parametrize("scopes", [(), ("root",), ("read", "sudo")])
def test_a_route_can_only_name_known_scopes(scopes):
    with pytest.raises(ValueError, match="needs one or more of the scopes"):
        requires(*scopes)
