"""X-Request-ID (SPEC.md "API surface: gateway"): kept when the caller sends a plain one, made otherwise,
echoed in the answer and written into every log line of the request."""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest
from fastapi import FastAPI

from libs.common.logs import JsonFormatter
from libs.common.request_ids import RequestIdMiddleware, accepted_request_id

log = logging.getLogger("shoploop.test.request_ids")


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)

    @app.get("/work")
    async def work() -> dict:
        log.warning("working on it")
        return {}

    @app.delete("/v1/customers/{person_key:path}")
    async def erase(person_key: str) -> dict:
        return {}

    return app


@pytest.fixture
def lines():
    captured: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(JsonFormatter("test").format(record))

    handler = Keep()
    root = logging.getLogger()
    root.addHandler(handler)
    level = logging.getLogger("shoploop.access").level
    logging.getLogger("shoploop.access").setLevel(logging.INFO)
    yield captured
    root.removeHandler(handler)
    logging.getLogger("shoploop.access").setLevel(level)


async def test_the_callers_id_is_echoed_and_in_every_log_line_of_the_request(lines):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        response = await client.get("/work", headers={"X-Request-ID": "order-42:retry.1"})

    assert response.headers["x-request-id"] == "order-42:retry.1"
    entries = [orjson.loads(line) for line in lines]
    assert {entry["message"] for entry in entries} >= {"working on it", "request answered"}
    assert all(entry["request_id"] == "order-42:retry.1" for entry in entries)
    access = next(entry for entry in entries if entry["message"] == "request answered")
    assert (access["method"], access["route"], access["status"]) == ("GET", "/work", 200)


async def test_the_access_line_names_the_route_not_the_person_key_in_its_path(lines):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        response = await client.delete("/v1/customers/erase-me@example.com")

    assert response.status_code == 200
    access = next(orjson.loads(line) for line in lines if b"request answered" in line.encode())
    assert access["route"] == "/v1/customers/{person_key:path}"
    assert not any("erase-me" in line for line in lines)


async def test_a_request_without_an_id_gets_a_new_one_per_request(lines):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        first = (await client.get("/work")).headers["x-request-id"]
        second = (await client.get("/work")).headers["x-request-id"]

    assert first != second and len(first) == 32


@pytest.mark.parametrize("given", ["", "a" * 129, "two words", "line\nbreak", '{"json": 1}', "中文"])
def test_an_id_that_could_garble_a_log_line_is_replaced(given):
    made = accepted_request_id(given)
    assert made != given and len(made) == 32
