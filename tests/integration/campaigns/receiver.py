"""A webhook receiver for the tests: a real HTTP server on a free port that verifies every attempt's signature with
the independent ``standardwebhooks`` package, can be told to fail for a while, and records what it received."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support import serve_app


@dataclass
class Receiver:
    """``secrets`` by campaign_id decide the verification; ``fail_next`` answers that many attempts with
    ``fail_status`` (then recovers); ``failing`` fails every attempt while set."""

    secrets: dict[str, str] = field(default_factory=dict)
    fail_next: int = 0
    failing: bool = False
    fail_status: int = 503
    retry_after: str | None = None
    delay_seconds: float = 0.0
    # attempts being answered right now, and the most there ever were at once
    in_flight: int = 0
    most_in_flight: int = 0
    attempts: int = 0
    attempt_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failed_attempts: int = 0
    # webhook-id -> the payloads delivered under it (a 2xx answer); one entry each unless a lost answer repeats it
    delivered: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    bad_signatures: list[str] = field(default_factory=list)
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                if self.delay_seconds:
                    await asyncio.sleep(self.delay_seconds)
            finally:
                self.in_flight -= 1
            headers = {name: value for name, value in request.headers.items()}
            self.attempts += 1
            self.attempt_times[headers.get("webhook-id", "")].append(time.monotonic())
            payload = orjson.loads(body)
            secret = self.secrets.get(payload["data"]["campaign_id"])
            try:
                if secret is None:
                    raise WebhookVerificationError("no secret for this campaign")
                verified = Webhook(secret).verify(body, headers)
            except WebhookVerificationError as exc:
                self.bad_signatures.append(f"{headers.get('webhook-id')}: {exc}")
                return Response(status_code=400)
            if self.failing or self.fail_next > 0:
                self.fail_next = max(self.fail_next - 1, 0)
                self.failed_attempts += 1
                extra = {"Retry-After": self.retry_after} if self.retry_after else {}
                return Response(status_code=self.fail_status, headers=extra)
            self.delivered[headers["webhook-id"]].append(verified)
            return Response(status_code=204)

        return app

    @property
    def touches(self) -> dict[str, dict[str, Any]]:
        """webhook-id -> the touch delivered under it (its data)."""
        return {webhook_id: payloads[0]["data"] for webhook_id, payloads in self.delivered.items()}


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with serve_app(receiver.app(), ready_path="/health") as base_url:
        receiver.url = f"{base_url}/hook"
        yield receiver
