"""HTTP pieces every service shares: the error shape ``{"code", "detail"}`` and an orjson response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response


class JsonResponse(Response):
    """JSON via orjson (UTF-8 kept as is: Chinese product names round-trip byte for byte)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JsonResponse:
        return JsonResponse({"code": error.code, "detail": error.detail}, status_code=error.status,
                            headers=error.headers)
