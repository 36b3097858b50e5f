"""HTTP pieces every service shares: the error shape ``{"code", "detail"}``, an orjson response, and the one
way to parse times and cursors and to render money."""

from __future__ import annotations

import base64
import dataclasses
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints
from zoneinfo import ZoneInfo

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, create_model

from libs.common.events import parse_rfc3339

T = TypeVar("T")


class JsonResponse(JSONResponse):
    """JSON via orjson (UTF-8 kept as is: Chinese product names round-trip byte for byte). A JSONResponse, so that
    FastAPI documents each route's response model in the OpenAPI (for any other class it writes "a string")."""

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

    # The 422 FastAPI documents on every route is its own list of problems; what is sent is this shape.
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_error_shape(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def document_error_shape(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document whose 422 body is the ``{code, detail}`` every service sends, not FastAPI's list."""
    schemas = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" in schemas:
        schemas["HTTPValidationError"] = _ERROR_SCHEMA
    return schema


_ERROR_SCHEMA = {
    "title": "ApiError", "type": "object", "required": ["code", "detail"],
    "properties": {"code": {"type": "string", "title": "Code"}, "detail": {"type": "string", "title": "Detail"}},
}


# --- Values every route parses or renders the same way (SPEC.md "API surface") ---------------------------

_CENT = Decimal("0.01")
# The types of answer fields: money as a JSON number rendered by ``money``; a ratio unrounded, null when its
# denominator is zero.
Money = float
Ratio = float | None


def money(amount: Decimal | int | str | None) -> float | None:
    """Money in an answer: a JSON number rounded to 2 decimals, half up (0.005 -> 0.01); None stays None."""
    if amount is None:
        return None
    # + 0.0 turns -0.0 (a rounded tiny negative) into 0.0.
    return float(Decimal(amount).quantize(_CENT, rounding=ROUND_HALF_UP)) + 0.0


def response_model(name: str, figures: type, *, module: str, base: type[BaseModel] = BaseModel,
                   leave_out: Collection[str] = (), only: Collection[str] | None = None,
                   **more: Any) -> type[BaseModel]:
    """The response model of a domain dataclass: its fields in its order (``only`` these, or all but ``leave_out``),
    then ``more`` (``name=(type, default or Field)``), each typed as the answer renders it: Decimal as Money, a
    Literal as str, a tuple as a list."""
    hints = get_type_hints(figures)
    fields: dict[str, Any] = {field.name: (_answered(hints[field.name]), ...) for field in dataclasses.fields(figures)
                              if field.name not in leave_out and (only is None or field.name in only)}
    return create_model(name, __base__=base, __module__=module, **fields, **more)


def _answered(annotation: Any) -> Any:
    if annotation is Decimal:
        return Money
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if origin is tuple:
        return list[_answered(get_args(annotation)[0])]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_answered(part) for part in get_args(annotation))]  # noqa: UP007
    return annotation


def encode_cursor(values: Sequence[str | int]) -> str:
    """An opaque page cursor holding the sort key of a page's last item."""
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


def page_of(rows: Sequence[T], limit: int, sort_key: Callable[[T], Sequence[str | int]]) -> tuple[list[T], str | None]:
    """A keyset page fetched as ``limit + 1`` rows: its first ``limit`` rows and the cursor after the last of them,
    or None when no row follows."""
    page = list(rows[:limit])
    return page, encode_cursor(sort_key(page[-1])) if len(rows) > limit else None


def decode_cursor(cursor: str | None, arity: int) -> tuple[str | int, ...] | None:
    """The sort key ``encode_cursor`` wrote; anything else (tampered, truncated, foreign) is 400 invalid_cursor."""
    if cursor is None:
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeError, orjson.JSONDecodeError):
        values = None
    if (not isinstance(values, list) or len(values) != arity
            or not all(isinstance(value, str | int) and not isinstance(value, bool) for value in values)):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    return tuple(values)


# Room on both sides for windows and lookbacks, so that date arithmetic never leaves datetime's range.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# An unencoded "+" in a query string arrives as a space: "...T10:00:00 08:00" meant "+08:00".
_SPACED_OFFSET = re.compile(r"(T\d{2}:\d{2}:\d{2}(?:\.\d+)?) (\d{2}:\d{2})$")
MOMENT_HELP = "a date (start of that day in SHOPLOOP_TIMEZONE) or an RFC 3339 timestamp"


def _invalid(name: str, reason: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"{name}: {reason}")


def parse_timestamp(value: str, name: str) -> datetime:
    """A client's RFC 3339 timestamp (a "+" that arrived as a space mended) within the supported years."""
    try:
        moment = parse_rfc3339(_SPACED_OFFSET.sub(r"\1+\2", value))
    except (ValueError, OverflowError) as exc:
        raise _invalid(name, str(exc)) from None
    if not EARLIEST <= moment < LATEST:
        raise _invalid(name, f"{value} is outside the supported years 1970 to 8999")
    return moment


def parse_as_of(value: str | None, now: datetime) -> datetime:
    """``as_of``: an RFC 3339 timestamp, ``now`` when absent."""
    return now if value is None else parse_timestamp(value, "as_of")


def parse_moment(value: str, name: str, zone: ZoneInfo) -> datetime:
    """``from``/``to``: a date (its start in ``zone``) or an RFC 3339 timestamp."""
    if not _DATE.match(value):
        return parse_timestamp(value, name)
    try:
        moment = datetime.combine(date.fromisoformat(value), time(), zone).astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # a date at the very edge of the calendar overflows in the zone
        raise _invalid(name, f"{exc}; expected {MOMENT_HELP}") from None
    if not EARLIEST <= moment < LATEST:
        raise _invalid(name, f"{value} is outside the supported years 1970 to 8999")
    return moment


def days_starting_in(start: datetime, end: datetime, zone: ZoneInfo) -> tuple[date, date]:
    """The first and last calendar day (in ``zone``) whose start lies in [start, end); first > last when none."""
    def start_of(day: date) -> datetime:
        return datetime.combine(day, time(), zone)

    first = start.astimezone(zone).date()
    if start_of(first) < start:
        first += timedelta(days=1)
    last = end.astimezone(zone).date()
    if start_of(last) >= end:
        last -= timedelta(days=1)
    return first, last


def parse_span(start: str, end: str, zone: ZoneInfo, max_days: int) -> tuple[datetime, datetime]:
    """A range ``[from, to)`` of at most ``max_days`` days (the setting that keeps one request bounded)."""
    start_at, end_at = parse_moment(start, "from", zone), parse_moment(end, "to", zone)
    if start_at >= end_at:
        raise _invalid("from", "must be before to (the range is [from, to))")
    if end_at - start_at > timedelta(days=max_days):
        raise _invalid("to", f"a range covers at most {max_days} days")
    return start_at, end_at
