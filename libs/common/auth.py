"""API keys with scopes (SPEC.md "Auth"): ``key:scope,scope;key:scope``; ``admin`` implies every scope.

Every route declares who may call it, once, as a dependency: ``requires("read")`` (any of the named scopes;
``admin`` always), or ``open_route()`` for the operations routes. ``libs/common/guard.py`` reads that
declaration from the matched route and answers 401/403/413 from the headers, before the body is read; the
dependency itself only hands the endpoint the key the guard checked. A route declaring neither stops the
app from starting (``route_rules``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.openapi.models import HTTPBase as HTTPBaseModel
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.security.base import SecurityBase

from libs.common.http import ApiError

SCOPES = frozenset({"ingest", "read", "campaigns", "admin"})
# Where the guard leaves the checked key for the route's dependency, and the route it checked it for.
API_KEY_SCOPE_FIELD = "shoploop.api_key"
GUARDED_ROUTE_SCOPE_FIELD = "shoploop.guarded_route"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="shoploop"'}
SEGMENT_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="shoploop", Basic realm="shoploop"'}


def parse_api_keys(spec: str) -> dict[str, frozenset[str]]:
    """Parse the ``SHOPLOOP_API_KEYS`` setting; unknown scopes are an error, not ignored.

    Errors name the entry by its position (1-based, counting non-empty entries), never by its text: the
    text holds the secret key, and start-up errors end up in logs.
    """
    keys: dict[str, frozenset[str]] = {}
    for position, entry in enumerate(filter(None, (part.strip() for part in spec.split(";"))), start=1):
        key, _, scopes = entry.partition(":")
        key = key.strip()
        granted = frozenset(filter(None, (scope.strip() for scope in scopes.split(","))))
        if not key or not granted:
            raise ValueError(f"SHOPLOOP_API_KEYS entry {position} must look like key:scope[,scope]")
        unknown = granted - SCOPES
        if unknown:
            # An unknown scope may be a key pasted into the wrong place: do not echo it either.
            raise ValueError(f"SHOPLOOP_API_KEYS entry {position}: {len(unknown)} unknown scope(s); "
                             f"scopes are {', '.join(sorted(SCOPES))}")
        if key in keys:
            raise ValueError(f"SHOPLOOP_API_KEYS entry {position} repeats the key of an earlier entry; "
                             "give each key one entry with all its scopes")
        keys[key] = granted
    return keys


class ApiKeys:
    def __init__(self, spec: str) -> None:
        self._keys = parse_api_keys(spec)

    def scopes_of(self, key: str) -> frozenset[str] | None:
        # Constant-time comparison: do not leak key prefixes through timing.
        found = None
        for known, scopes in self._keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = scopes
        return found

    def authorize(self, key: str | None, scope: str, *also: str,
                  challenge: Mapping[str, str] = CHALLENGE) -> str:
        """Return the key if it holds ``scope`` or one of ``also`` (or admin); raise 401/403 otherwise."""
        scopes = self.scopes_of(key) if key else None
        if scopes is None:
            raise ApiError(401, "unauthorized", "missing or unknown API key", headers=challenge)
        wanted = (scope, *also)
        if "admin" not in scopes and scopes.isdisjoint(wanted):
            needed = " or ".join(repr(name) for name in wanted)
            raise ApiError(403, "forbidden", f"this API key lacks the {needed} scope")
        return key  # type: ignore[return-value]


def key_from_authorization(header: str, *, basic: bool = True) -> str | None:
    """``Bearer KEY``, or (when ``basic``) HTTP Basic with the key as user name (Segment's write key)."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic" and basic:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def key_from_headers(request: Request) -> str | None:
    """The key of a request's ``Authorization`` header (Bearer, or Basic user name)."""
    return key_from_authorization(request.headers.get("authorization", ""))


# --- what each route declares --------------------------------------------------------------------------


class _SegmentWriteKey(SecurityBase):
    """OpenAPI only: the Segment-compatible routes also take the key as the HTTP Basic user name."""

    def __init__(self) -> None:
        self.model = HTTPBaseModel(scheme="basic", description="the API key as the user name (Segment write key)")
        self.scheme_name = "segment_write_key"

    async def __call__(self) -> None:
        return None


_SEGMENT_WRITE_KEY = _SegmentWriteKey()


class Access(SecurityBase):
    """A route's access rule: callers holding any of ``scopes`` (admin always); the request body's limit
    (None: the app's default); whether the key may come as the HTTP Basic user name (Segment routes)."""

    def __init__(self, *scopes: str, max_body_bytes: int | None = None, basic: bool = False) -> None:
        if not scopes or not SCOPES.issuperset(scopes):
            raise ValueError(f"a route needs one or more of the scopes {', '.join(sorted(SCOPES))}")
        if max_body_bytes is not None and max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.scopes = tuple(dict.fromkeys(scopes))
        self.max_body_bytes = max_body_bytes
        self.basic = basic
        self.model = HTTPBearerModel(bearerFormat="API key",
                                     description="Authorization: Bearer KEY; scopes ingest, read, campaigns, admin")
        self.scheme_name = "api_key"

    async def __call__(self, request: Request) -> str:
        key = request.scope.get(API_KEY_SCOPE_FIELD)
        # The guard did not run, or checked the key for another route than the router chose: refuse rather
        # than serve unchecked.
        if key is None or request.scope.get(GUARDED_ROUTE_SCOPE_FIELD) is not request.scope.get("route"):
            raise ApiError(401, "unauthorized", "missing or unknown API key", headers=CHALLENGE)
        return key


class _SegmentAccess(Access):
    async def __call__(self, request: Request, _basic: None = Depends(_SEGMENT_WRITE_KEY)) -> str:
        return await super().__call__(request)


class _Open:
    """The marker of a route anyone may call (health, readiness, metrics)."""

    def __init__(self, max_body_bytes: int = 0) -> None:
        self.max_body_bytes = max_body_bytes

    async def __call__(self) -> None:
        return None


_OPEN = _Open()


def requires(*scopes: str, max_body_bytes: int | None = None, basic: bool = False) -> Any:
    """The dependency a route declares: callers need one of ``scopes`` (admin always); it returns their key.

    ``key: Annotated[str, requires("read")]`` or ``dependencies=[requires("read")]``.
    """
    access = (_SegmentAccess if basic else Access)(*scopes, max_body_bytes=max_body_bytes, basic=basic)
    return Security(access, scopes=list(access.scopes))


def open_route() -> Any:
    """The dependency of a route that needs no key (``/healthz``, ``/readyz``, ``/metrics``)."""
    return Depends(_OPEN)


# The keys routes of several services take, by name: reads (reports, profiles), and what only an administrator
# may do (erasure, which is irreversible and reaches every service; rejected events, which hold raw personal data).
ReadKey = Annotated[str, requires("read")]
AdminKey = Annotated[str, requires("admin")]


@dataclass(frozen=True, slots=True)
class RouteRule:
    """What the guard enforces for one route: scopes (None: open), body limit, Basic allowed."""

    scopes: tuple[str, ...] | None
    max_body_bytes: int
    basic: bool = False


def _declarations(route: RouteContext) -> list[Access | _Open]:
    found: list[Access | _Open] = []
    pending = [route.dependant]  # the effective dependant: the including routers' dependencies too
    while pending:
        dependant = pending.pop()
        if isinstance(dependant.call, Access | _Open):
            found.append(dependant.call)
        pending.extend(dependant.dependencies)
    return found


def _documentation_paths(app: FastAPI) -> set[str]:
    paths = {app.openapi_url, app.docs_url, app.redoc_url}
    if app.docs_url and app.swagger_ui_oauth2_redirect_url:
        paths.add(app.swagger_ui_oauth2_redirect_url)
    return {path for path in paths if path}


def route_rules(app: FastAPI, *, default_max_body_bytes: int) -> list[tuple[RouteContext, RouteRule]]:
    """Every route (routers' included ones resolved) with its rule, in routing order; ValueError naming each
    route that declares no rule (or more than one): such an app must not start."""
    documentation = _documentation_paths(app)
    rules: list[tuple[RouteContext, RouteRule]] = []
    problems: list[str] = []
    for route in iter_route_contexts(app.router.routes):
        path = route.path or repr(route.original_route)
        if not isinstance(route.original_route, APIRoute):
            if path in documentation:
                rules.append((route, RouteRule(scopes=None, max_body_bytes=0)))
            else:
                problems.append(f"{path} (not an API route; only the documentation routes may be)")
            continue
        declared = _declarations(route)
        where = f"{','.join(sorted(route.methods or ()))} {path}"
        if len(declared) != 1:
            problems.append(f"{where} declares {'no' if not declared else len(declared)} access rules")
            continue
        (rule,) = declared
        if isinstance(rule, _Open):
            rules.append((route, RouteRule(scopes=None, max_body_bytes=rule.max_body_bytes)))
        else:
            limit = default_max_body_bytes if rule.max_body_bytes is None else rule.max_body_bytes
            rules.append((route, RouteRule(scopes=rule.scopes, max_body_bytes=limit, basic=rule.basic)))
    if problems:
        raise ValueError("every route must declare requires(scope) or open_route(): " + "; ".join(problems))
    return rules


def scopes_needed(rules: Iterable[tuple[RouteContext, RouteRule]]) -> dict[str, tuple[str, ...] | None]:
    """``"METHOD path"`` -> scopes (None: open), for documentation and tests."""
    table = {}
    for route, rule in rules:
        for method in sorted(route.methods or ()):
            table[f"{method} {route.path}"] = rule.scopes
    return table
