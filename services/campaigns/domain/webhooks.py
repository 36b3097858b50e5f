"""Standard Webhooks v1 delivery rules: secrets, signatures, retry schedule, answers and URL rules (SPEC.md
"Campaigns", Webhooks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_URL_LENGTH = 2048
JITTER = 0.2
# SPEC.md defaults: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, the delays after the first, second, ... failed attempt.
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

Outcome = Literal["delivered", "retry", "disable"]


class UniformSource(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def new_secret() -> str:
    """A campaign's signing secret: "whsec_" + base64 of 32 random bytes (SPEC.md Webhooks: >= 24 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """webhook-signature: "v1," + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed by the decoded secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt: webhook-id (the touch_id), -timestamp, -signature."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def classify(status_code: int) -> Outcome:
    """Only a 2xx answer delivers; 410 Gone disables the endpoint; anything else is retried (SPEC.md Webhooks)."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code == 410:
        return "disable"
    return "retry"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def next_attempt_delay(
    attempt: int, schedule: Sequence[float], retry_after: float | None, rng: UniformSource
) -> float | None:
    """Seconds before the retry that follows failed attempt number `attempt` (1 = the first): the schedule's entry
    with ±20% jitter, at least Retry-After (capped at the schedule's longest step); None when retries are exhausted."""
    if attempt < 1 or attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, max(schedule)))
    return delay


def _address_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _address_reason(address.ipv4_mapped)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("CGNAT", address in ipaddress.ip_network("100.64.0.0/10")),
        ("unique-local", address in ipaddress.ip_network("fc00::/7")),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("not public", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return f"address {address} is {name}"
    return None


def address_refused(text: str) -> str | None:
    """Why a webhook may not connect to this resolved address (outside local mode), or None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return f"address {text} is not an IP address"
    return _address_reason(address)


def url_allowed(url: str, resolved_ips: Sequence[str] | None, local_mode: bool) -> str | None:
    """Why a webhook URL may not be called, or None: local mode allows any http(s) URL; outside it https only and no
    resolved address may be loopback, private, link-local, CGNAT or unique-local (SPEC.md Webhooks).
    ``resolved_ips`` None: the name's addresses are checked where the connection resolves it (a literal address
    is checked here)."""
    if len(url) > MAX_URL_LENGTH:
        return f"webhook_url is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        return "webhook_url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "webhook_url must be an http(s) URL"
    if not parts.hostname:
        return "webhook_url names no host"
    if parts.username is not None or parts.password is not None:
        return "webhook_url must not carry credentials"
    if local_mode:
        return None
    if parts.scheme != "https":
        return "webhook_url must be https outside local mode"
    addresses = list(resolved_ips or ())
    try:
        addresses.append(str(ipaddress.ip_address(parts.hostname)))
    except ValueError:
        if resolved_ips is not None and not resolved_ips:
            return f"host {parts.hostname} did not resolve"
    return next((reason for reason in map(address_refused, addresses) if reason is not None), None)
