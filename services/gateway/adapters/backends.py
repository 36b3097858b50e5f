"""The services behind the gateway, reached through one shared ``httpx.AsyncClient``: JSON reads for the
gateway's own answers, and streamed forwarding of every other route (SPEC.md "API surface: gateway")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from libs.common.http import ApiError
from libs.common.request_ids import HEADER as REQUEST_ID_HEADER
from libs.common.request_ids import current_request_id
from services.gateway.settings import BACKENDS, GatewaySettings

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded (plus host and what httpx sets).
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host",
})


# Answers up to this size are relayed whole; larger ones (and those of unknown length) are streamed.
_SMALL_ANSWER_BYTES = 256 * 1024


class BackendUnavailable(Exception):
    """A service could not give an answer: not deployed, unreachable, too slow, or it answered an error."""

    def __init__(self, service: str, reason: str, *, status: int = 503, code: str = "service_unavailable") -> None:
        super().__init__(reason)
        self.service = service
        self.reason = reason
        self.status = status
        self.code = code

    def as_api_error(self) -> ApiError:
        return ApiError(self.status, self.code, f"{self.service}: {self.reason}", headers={"Retry-After": "1"})


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    timeout: float


class Backends:
    """Base URLs and timeouts of the services, and the client every request to them goes through."""

    def __init__(self, settings: GatewaySettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.backends = {
            name: Backend(name, settings.backend_url(name), settings.backend_timeout(name)) for name in BACKENDS
        }
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=settings.max_connections,
                                max_keepalive_connections=settings.max_keepalive_connections),
            timeout=httpx.Timeout(30.0, connect=settings.connect_timeout_seconds),
            follow_redirects=False, transport=transport,
        )

    async def close(self) -> None:
        await self.client.aclose()

    def configured(self) -> list[Backend]:
        return [backend for backend in self.backends.values() if backend.url]

    def _backend(self, service: str) -> Backend:
        backend = self.backends[service]
        if not backend.url:
            raise BackendUnavailable(service, "not deployed (no URL configured)", code="service_not_deployed")
        return backend

    def _timeout(self, backend: Backend, limit: float | None) -> httpx.Timeout:
        total = backend.timeout if limit is None else min(limit, backend.timeout)
        return httpx.Timeout(total, connect=min(total, self.settings.connect_timeout_seconds))

    async def get_json(self, service: str, path: str, *, key: str | None, params: Mapping[str, Any] | None = None,
                       within_seconds: float | None = None, accept_status: frozenset[int] = frozenset({200})) -> Any:
        """GET a service's JSON answer with the caller's key and the request id; BackendUnavailable otherwise."""
        backend = self._backend(service)
        try:
            response = await self.client.get(
                f"{backend.url}{path}", params=params, headers=_outgoing_headers({}, key),
                timeout=self._timeout(backend, within_seconds),
            )
        except httpx.TransportError as exc:
            raise _transport_failure(backend, exc) from None
        if response.status_code not in accept_status:
            raise BackendUnavailable(service, f"answered {response.status_code}: {_error_detail(response.content)}",
                                     status=502, code="service_error")
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BackendUnavailable(service, "answered a body that is not JSON", status=502,
                                     code="service_error") from None

    async def forward(self, service: str, request: Request) -> Response:
        """Send ``request`` on to ``service`` as it came and stream the answer back.

        The body is read first: the guard has bounded it by the route's own limit (at most the service's,
        500 KB for ingest), so a body over it is refused with 413 before any service is asked, and a slow
        client never holds a connection to a service."""
        backend = self._backend(service)
        body = await request.body()
        query = request.scope.get("query_string", b"")
        url = f"{backend.url}{request.scope.get('raw_path', request.url.path.encode()).decode('latin-1')}"
        outgoing = self.client.build_request(
            request.method, url + (f"?{query.decode('latin-1')}" if query else ""),
            headers=_outgoing_headers(request.headers, None), content=body or None,
            timeout=self._timeout(backend, None),
        )
        try:
            upstream = await self.client.send(outgoing, stream=True)
            length = upstream.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) <= _SMALL_ANSWER_BYTES:
                # A small answer in one piece: cheaper than a stream (no task watching for the disconnect).
                try:
                    content = await upstream.aread()
                finally:
                    await upstream.aclose()
                return Response(content, status_code=upstream.status_code, headers=_answer_headers(upstream.headers))
        except httpx.TransportError as exc:
            raise _transport_failure(backend, exc) from None
        return StreamingResponse(
            upstream.aiter_raw(), status_code=upstream.status_code,
            headers=_answer_headers(upstream.headers), background=BackgroundTask(upstream.aclose),
        )


def _outgoing_headers(incoming: Mapping[str, str], key: str | None) -> dict[str, str]:
    connection_scoped = {token.strip().lower() for token in incoming.get("connection", "").split(",")}
    headers = {name: value for name, value in incoming.items()
               if name.lower() not in _HOP_BY_HOP and name.lower() not in connection_scoped}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    request_id = current_request_id.get()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


def _answer_headers(upstream: httpx.Headers) -> dict[str, str]:
    connection_scoped = {token.strip().lower() for token in upstream.get("connection", "").split(",")}
    # The gateway's own middleware sets the request id on the answer.
    dropped = _HOP_BY_HOP | connection_scoped | {REQUEST_ID_HEADER, "server", "date"}
    return {name: value for name, value in upstream.multi_items() if name.lower() not in dropped}


def _transport_failure(backend: Backend, exc: httpx.TransportError) -> BackendUnavailable:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return BackendUnavailable(backend.name, f"not reachable at {backend.url} ({reason})")
    if isinstance(exc, httpx.TimeoutException):
        return BackendUnavailable(backend.name, f"no answer within {backend.timeout:g} s ({type(exc).__name__})",
                                  status=504, code="service_timeout")
    return BackendUnavailable(backend.name, f"connection failed ({type(exc).__name__}: {reason})",
                              status=502, code="bad_gateway")


def _error_detail(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(parsed, dict) and "detail" in parsed:
        return f"{parsed.get('code', 'error')}: {parsed['detail']}"
    return body[:200].decode("utf-8", "replace")
