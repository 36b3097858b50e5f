"""SPEC.md "Auth", generated from every service app's route table (tests/service_apps.py): each route is
refused without a key (401) and with a key lacking its scope (403), passes the guard with its scope, and a
body is refused before the app reads a byte of it (no key: 401; over the route's limit: 413). A new route
or a new service is covered without editing this file."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI
from starlette.types import Message

from libs.common.auth import SCOPES, RouteRule, requires, route_rules
from libs.common.service import Service, create_app
from libs.common.settings import CommonSettings, KafkaSettings, ServiceSettings
from tests.service_apps import SCOPE_KEYS, TEST_API_KEYS, ServiceApp, service_apps
from tests.support import serve_app

TEN_MB = 10 * 1024 * 1024
CHUNK = 64 * 1024
BODY_METHODS = {"POST", "PUT", "PATCH"}
OPERATIONS = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


@dataclass(frozen=True)
class RouteCase:
    service: ServiceApp
    method: str
    template: str
    rule: RouteRule

    @property
    def path(self) -> str:
        # Any value fills a path parameter: the guard decides before the route looks at it.
        return re.sub(r"\{[^}]+\}", "x", self.template)

    def __str__(self) -> str:
        return f"{self.service.name} {self.method} {self.template}"


def _keys_lacking(scopes: tuple[str, ...]) -> str:
    return "k-lacks-" + "-".join(sorted(scopes))


def _all_cases() -> Iterator[RouteCase]:
    for service in service_apps():
        app = service.build("sqlite+aiosqlite:///:memory:")
        for route, rule in route_rules(app, default_max_body_bytes=app.state.default_max_body_bytes):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield RouteCase(service, method, route.path, rule)


CASES = list(_all_cases())
SCOPED = [case for case in CASES if case.rule.scopes is not None]
WITH_BODY = [case for case in SCOPED if case.method in BODY_METHODS]


def _api_keys() -> str:
    """The test keys plus, for each scope set a route accepts, a key holding every other scope but admin."""
    extra = {}
    for case in SCOPED:
        others = SCOPES - set(case.rule.scopes) - {"admin"}
        if others:
            extra[_keys_lacking(case.rule.scopes)] = ",".join(sorted(others))
    return ";".join([TEST_API_KEYS, *(f"{key}:{scopes}" for key, scopes in extra.items())])


API_KEYS = _api_keys()


def test_every_service_and_operations_route_is_in_the_table():
    names = {case.service.name for case in CASES}
    assert {"ingest", "funnel", "segmentation"} <= names
    for name in names:
        open_paths = {case.template for case in CASES if case.service.name == name and case.rule.scopes is None}
        assert open_paths <= OPERATIONS, f"{name} serves {open_paths - OPERATIONS} without a key"
        assert {"/healthz", "/readyz", "/metrics", "/openapi.json"} <= open_paths


# --- driving an app's ASGI interface directly, counting the body bytes it is handed ----------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    bytes_read: int

    def json(self) -> dict:
        return orjson.loads(self.body)


async def call(app: FastAPI, method: str, path: str, *, key: str | None = None, body_bytes: int = 0,
               declare_length: bool = True) -> Answer:
    """One request of ``body_bytes`` (sent in 64 KiB chunks as the app asks for them)."""
    headers = [(b"host", b"test"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if declare_length:
        headers.append((b"content-length", str(body_bytes).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("test", 80)}
    handed_out = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal handed_out
        if handed_out >= body_bytes and sent:
            return {"type": "http.disconnect"}
        size = min(CHUNK, body_bytes - handed_out)
        handed_out += size
        return {"type": "http.request", "body": b"x" * size, "more_body": handed_out < body_bytes}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return Answer(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body, handed_out)


@pytest.fixture(scope="module")
def bare_apps() -> dict[str, FastAPI]:
    """Apps not started: what the guard answers never reaches a database or the broker."""
    return {service.name: service.build("sqlite+aiosqlite:///:memory:", api_keys=API_KEYS)
            for service in service_apps()}


@pytest.mark.parametrize("case", SCOPED, ids=str)
async def test_a_request_without_a_key_is_refused_with_401_before_its_body_is_read(case, bare_apps):
    answer = await call(bare_apps[case.service.name], case.method, case.path, body_bytes=TEN_MB)
    assert answer.status == 401
    assert answer.json()["code"] == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.bytes_read == 0


@pytest.mark.parametrize("case", SCOPED, ids=str)
async def test_an_unknown_key_is_refused_with_401(case, bare_apps):
    answer = await call(bare_apps[case.service.name], case.method, case.path, key="k-nobody")
    assert (answer.status, answer.json()["code"]) == (401, "unauthorized")


@pytest.mark.parametrize("case", [case for case in SCOPED if SCOPES - set(case.rule.scopes) - {"admin"}], ids=str)
async def test_a_key_holding_every_other_scope_is_refused_with_403_before_the_body_is_read(case, bare_apps):
    answer = await call(bare_apps[case.service.name], case.method, case.path, key=_keys_lacking(case.rule.scopes),
                        body_bytes=TEN_MB)
    assert answer.status == 403
    assert answer.json()["code"] == "forbidden"
    assert answer.bytes_read == 0


@pytest.mark.parametrize("case", WITH_BODY, ids=str)
async def test_a_declared_body_over_the_route_limit_is_refused_with_413_unread(case, bare_apps):
    limit = case.rule.max_body_bytes
    assert 0 < limit <= 16 * 1024 * 1024, "every route that takes a body has a sane limit"
    answer = await call(bare_apps[case.service.name], case.method, case.path, key=SCOPE_KEYS[case.rule.scopes[0]],
                        body_bytes=limit + 1)
    assert (answer.status, answer.json()["code"]) == (413, "request_too_large")
    assert answer.bytes_read == 0


@pytest.mark.parametrize("case", WITH_BODY, ids=str)
async def test_a_streamed_body_over_the_route_limit_is_refused_with_413_once_it_passes_it(case, bare_apps):
    limit = case.rule.max_body_bytes
    answer = await call(bare_apps[case.service.name], case.method, case.path, key=SCOPE_KEYS[case.rule.scopes[0]],
                        body_bytes=TEN_MB, declare_length=False)
    assert (answer.status, answer.json()["code"]) == (413, "request_too_large")
    assert limit < answer.bytes_read <= limit + CHUNK


@pytest.mark.parametrize("case", [case for case in CASES if case.rule.scopes is None], ids=str)
async def test_operations_routes_need_no_key(case, bare_apps):
    answer = await call(bare_apps[case.service.name], case.method, case.path)
    # /readyz says 503 here (nothing started): what matters is that no key was asked for.
    assert answer.status == (503 if case.template == "/readyz" else 200)


# --- started apps: the right key gets past the guard to the route ---------------------------------------------


@pytest.mark.parametrize("service", service_apps(), ids=lambda service: service.name)
async def test_the_needed_scope_passes_the_guard(service, tmp_path):
    app = service.build(f"sqlite+aiosqlite:///{tmp_path / 'service.db'}", api_keys=API_KEYS)
    cases = [case for case in SCOPED if case.service.name == service.name]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            assert (await client.get("/readyz")).status_code in (200, 503)
            for case in cases:
                for scope in (*case.rule.scopes, "admin"):
                    body = b"[]" if case.method in BODY_METHODS else None
                    response = await client.request(case.method, case.path, content=body,
                                                    headers={"Authorization": f"Bearer {SCOPE_KEYS[scope]}",
                                                             "Content-Type": "application/json"})
                    assert response.status_code not in (401, 403), (str(case), scope, response.text)
                    assert response.status_code < 500 or response.status_code == 503, (str(case), response.text)


def test_openapi_shows_the_security_scheme_and_scopes_of_every_route(bare_apps):
    for case in SCOPED:
        document = bare_apps[case.service.name].openapi()
        assert document["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer"
        operation = document["paths"][re.sub(r":\w+}", "}", case.template)][case.method.lower()]
        assert {"api_key": list(case.rule.scopes)} in operation["security"], str(case)


# --- an app whose route declares no access rule must not start ---------------------------------------------------


def _app_with(router: APIRouter, tmp_path) -> FastAPI:
    common = CommonSettings(env="local", kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    settings = ServiceSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", common=common)
    return create_app(Service("probe", settings, database=_NoDatabase()), routers=[router], title="t", description="d")


class _NoDatabase:
    async def start(self) -> None:
        raise AssertionError("the app must refuse before starting anything")


async def test_an_app_with_a_route_declaring_no_scope_refuses_to_start(tmp_path):
    router = APIRouter()

    @router.post("/v1/forgotten")
    async def forgotten() -> dict:
        return {}

    app = _app_with(router, tmp_path)
    with pytest.raises(ValueError, match=r"POST /v1/forgotten declares no access rules"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_route_declaring_two_rules_refuses_to_start(tmp_path):
    router = APIRouter(dependencies=[requires("read")])

    @router.post("/v1/twice", dependencies=[requires("admin")])
    async def twice() -> dict:
        return {}

    app = _app_with(router, tmp_path)
    with pytest.raises(ValueError, match=r"POST /v1/twice declares 2 access rules"):
        async with app.router.lifespan_context(app):
            pass


# --- the same over a real socket: the 401 arrives while the client has sent only the headers ------------------


@pytest.mark.parametrize("service", service_apps(), ids=lambda service: service.name)
async def test_a_real_server_answers_401_to_headers_alone(service, tmp_path):
    case = next(case for case in WITH_BODY if case.service.name == service.name)
    app = service.build(f"sqlite+aiosqlite:///{tmp_path / 'service.db'}", api_keys=API_KEYS)
    async with serve_app(app, ready_path="/healthz") as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"{case.method} {case.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {TEN_MB}\r\n\r\n".encode())
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
