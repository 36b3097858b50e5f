"""Forwarding (SPEC.md "API surface: gateway"): every service route at its own path, method, path, query,
body, key and request id passed on, hop-by-hop headers dropped, redirects not followed, failures mapped."""

from __future__ import annotations

import httpx
import pytest

READ = {"Authorization": "Bearer dev-read-key"}
INGEST = {"Authorization": "Bearer dev-ingest-key"}


async def test_forwards_method_path_query_body_key_and_request_id_to_the_owning_service(gateway, backends):
    body = '{"type":"view","user_id":"u-1","product":{"product_id":"sku-1","name":"真丝连衣裙"}}'.encode()
    response = await gateway.post("/v1/events?dry=1", content=body,
                                  headers={**INGEST, "X-Request-ID": "req-42", "Content-Type": "application/json"})

    assert response.status_code == 200
    [sent] = backends.requests
    assert (sent.method, str(sent.url)) == ("POST", "http://127.0.0.1:8001/v1/events?dry=1")
    assert backends.bodies == [body]
    assert sent.headers["authorization"] == "Bearer dev-ingest-key"
    assert sent.headers["x-request-id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"


async def test_makes_a_request_id_when_the_caller_sends_none_and_answers_with_it(gateway, backends):
    response = await gateway.get("/v1/kpis", params={"from": "2026-05-01", "to": "2026-05-02"}, headers=READ)

    made = backends.requests[0].headers["x-request-id"]
    assert len(made) == 32
    assert response.headers["x-request-id"] == made


async def test_keeps_the_percent_encoding_of_the_path(gateway, backends):
    await gateway.get("/v1/customers/%E5%BC%A0%20x", headers=READ)

    assert backends.requests[0].url.raw_path == b"/v1/customers/%E5%BC%A0%20x"
    assert str(backends.requests[0].url).startswith("http://127.0.0.1:8003/")


async def test_drops_hop_by_hop_headers_both_ways(gateway, backends):
    backends.answer = lambda request: httpx.Response(
        200, content=b"{}", headers={"Connection": "x-backend-private", "x-backend-private": "1",
                                      "Keep-Alive": "timeout=5", "x-kept": "yes"})

    response = await gateway.get("/v1/rfm", headers={**READ, "Connection": "x-caller-private",
                                                     "x-caller-private": "1", "TE": "trailers",
                                                     "Proxy-Authorization": "Basic eDp5", "x-also": "kept"})

    sent = backends.requests[0].headers
    for name in ("x-caller-private", "te", "proxy-authorization"):
        assert name not in sent
    assert sent["x-also"] == "kept"
    for name in ("x-backend-private", "keep-alive"):
        assert name not in response.headers
    assert response.headers["x-kept"] == "yes"


async def test_passes_a_redirect_back_instead_of_following_it(gateway, backends):
    backends.answer = lambda request: httpx.Response(307, headers={"Location": "http://elsewhere.example/x"})

    response = await gateway.get("/v1/segments", headers=READ)

    assert response.status_code == 307
    assert response.headers["location"] == "http://elsewhere.example/x"
    assert len(backends.requests) == 1


async def test_streams_a_large_answer_through_unchanged(gateway, backends):
    payload = bytes(range(256)) * 40_000  # 10 MB

    async def chunks():
        for start in range(0, len(payload), 65_536):
            yield payload[start:start + 65_536]

    backends.answer = lambda request: httpx.Response(200, content=chunks(),
                                                     headers={"Content-Type": "application/octet-stream"})

    response = await gateway.get("/v1/products", params={"from": "2026-05-01", "to": "2026-05-02"}, headers=READ)

    assert response.status_code == 200
    assert response.content == payload


@pytest.mark.parametrize(("failure", "status", "code"), [
    (httpx.ConnectError("connection refused"), 503, "service_unavailable"),
    (httpx.ConnectTimeout("connect timed out"), 503, "service_unavailable"),
    (httpx.ReadTimeout("read timed out"), 504, "service_timeout"),
    (httpx.RemoteProtocolError("server disconnected"), 502, "bad_gateway"),
])
async def test_maps_a_service_that_cannot_answer_to_a_gateway_error_naming_it(gateway, backends, failure, status,
                                                                              code):
    def fail(request):
        raise failure

    backends.answer = fail

    response = await gateway.get("/v1/lifecycle", headers=READ)

    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["detail"].startswith("segmentation: ")


async def test_a_service_not_deployed_is_503_without_any_request(make_gateway, backends):
    gateway = make_gateway(campaigns_url="")

    response = await gateway.get("/v1/campaigns", headers=READ)

    assert (response.status_code, response.json()["code"]) == (503, "service_not_deployed")
    assert backends.requests == []


async def test_refuses_a_declared_body_over_the_services_own_limit_before_reading_it(gateway, backends):
    response = await gateway.post("/v1/funnels", content=b"x" * (64 * 1024 + 1),
                                  headers={"Authorization": "Bearer dev-campaigns-key"})

    assert (response.status_code, response.json()["code"]) == (413, "request_too_large")
    assert backends.requests == []


async def test_refuses_a_streamed_body_once_it_passes_the_services_own_limit(gateway, backends):
    async def endless():
        for _ in range(600):
            yield b"y" * 1000

    response = await gateway.post("/v1/events", content=endless(), headers=INGEST)

    assert (response.status_code, response.json()["code"]) == (413, "request_too_large")
    assert backends.requests == []


async def test_unknown_paths_are_404_from_the_gateway_itself(gateway, backends):
    response = await gateway.get("/v1/nothing-here", headers=READ)

    assert response.status_code == 404
    assert backends.requests == []
