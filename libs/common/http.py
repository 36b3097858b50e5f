"""HTTP pieces every service shares: the error shape ``{"code", "detail"}`` and an orjson response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
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


def describe_validation_errors(errors: Any) -> str:
    """FastAPI's list of request problems as one line, each with its place: ``body.steps[0].type: ...``."""
    parts = []
    for error in errors:
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        parts.append(f"{path}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def install_error_handler(app: FastAPI) -> None:
    """Every error answer has the shape ``{"code", "detail"}``; a request FastAPI cannot validate is
    422 ``invalid_request`` with each problem's place spelled out (not FastAPI's list)."""
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JsonResponse:
        return JsonResponse({"code": error.code, "detail": error.detail}, status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, error: RequestValidationError) -> JsonResponse:
        return JsonResponse({"code": "invalid_request", "detail": describe_validation_errors(error.errors())},
                            status_code=422)
