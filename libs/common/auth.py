"""API keys with scopes (SPEC.md "Auth"): ``key:scope,scope;key:scope``; ``admin`` implies every scope."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from libs.common.http import ApiError

SCOPES = frozenset({"ingest", "read", "campaigns", "admin"})


def parse_api_keys(spec: str) -> dict[str, frozenset[str]]:
    """Parse the ``SHOPLOOP_API_KEYS`` setting; unknown scopes are an error, not ignored."""
    keys: dict[str, frozenset[str]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        key, _, scopes = entry.partition(":")
        granted = frozenset(filter(None, (scope.strip() for scope in scopes.split(","))))
        if not key or not granted:
            raise ValueError(f"API key entry {entry!r} must look like key:scope[,scope]")
        unknown = granted - SCOPES
        if unknown:
            raise ValueError(f"API key entry {entry!r}: unknown scope(s) {', '.join(sorted(unknown))}")
        if key.strip() in keys:
            raise ValueError(f"API key {key.strip()[:4]}… is listed twice; give it one entry with all its scopes")
        keys[key.strip()] = granted
    return keys


class ApiKeys:
    def __init__(self, spec: str) -> None:
        self._keys = parse_api_keys(spec)

    def scopes_of(self, key: str) -> frozenset[str] | None:
        # Constant-time comparison: do not leak key prefixes through timing.
        for known, scopes in self._keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return scopes
        return None

    def authorize(self, key: str | None, scope: str) -> str:
        """Return the key if it holds ``scope`` (or admin); raise 401/403 otherwise."""
        scopes = self.scopes_of(key) if key else None
        if scopes is None:
            raise ApiError(401, "unauthorized", "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if scope not in scopes and "admin" not in scopes:
            raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")
        return key  # type: ignore[return-value]


def key_from_headers(request: Request) -> str | None:
    """``Authorization: Bearer KEY``, or HTTP Basic with the key as user name (Segment's write key)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def require_scope(scope: str) -> Callable[[Request], Awaitable[str]]:
    """A FastAPI dependency returning the caller's key once it is known to hold ``scope``."""

    # async: a sync dependency would cost a thread-pool round trip on every request.
    async def dependency(request: Request) -> str:
        keys: ApiKeys = request.app.state.api_keys
        return keys.authorize(key_from_headers(request), scope)

    return dependency
