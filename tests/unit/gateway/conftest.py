from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from services.gateway.bootstrap import create_gateway_app
from services.gateway.settings import GatewaySettings


class RecordingBackends:
    """Every service behind the gateway, answered in memory by ``answer``; each request is kept."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.answer: Callable[[httpx.Request], httpx.Response] = lambda request: httpx.Response(
            200, json={"items": [], "next_cursor": None})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.requests.append(request)
        answer = self.answer(request)
        if not answer.is_stream_consumed:
            return answer
        # As a real connection does: the body arrives as a stream (a response built from bytes is already read).
        return httpx.Response(answer.status_code, headers=answer.headers, content=_chunks(answer.content))


async def _chunks(content: bytes):
    yield content


@pytest.fixture
def backends() -> RecordingBackends:
    return RecordingBackends()


@pytest.fixture
def make_gateway(backends):
    clients: list[httpx.AsyncClient] = []

    def make(**overrides) -> httpx.AsyncClient:
        settings = GatewaySettings(**overrides)
        app = create_gateway_app(settings, transport=httpx.MockTransport(backends.handle))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        clients.append(client)
        return client

    yield make


@pytest.fixture
def gateway(make_gateway) -> httpx.AsyncClient:
    return make_gateway()
