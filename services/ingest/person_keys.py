"""The person key of a rejected event's raw body, best effort (SPEC.md "Events": person key = user_id if
present, else "anon:" + anonymous_id), so that an erasure request can find the person's rejected events.

A rejected body may be anything a client sent. Derivation never raises: it answers None when the body does
not name a person the way an accepted event would. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from libs.common.events import ANONYMOUS_PREFIX

# The fields naming the person, per request format (libs/common/segment.py maps userId/anonymousId).
_ID_FIELDS = {"native": ("user_id", "anonymous_id"), "segment": ("userId", "anonymousId")}
# libs/common/events.py `Identifier`: an id longer than this is rejected, so it is no person's key.
_MAX_ID_LENGTH = 256


def _identifier(value: Any, fmt: str) -> str | None:
    if fmt == "segment" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # as libs/common/segment.py does: Segment treats numeric ids as strings
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_ID_LENGTH or "\x00" in value:
        return None  # NUL: not storable in PostgreSQL text, and no accepted event's key either
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate: not storable either
        return None
    return value


def person_key_of(raw: Any, fmt: str) -> str | None:
    """The key the event would have been published under, or None when the body does not give one.

    As in ``Event``: an id that is absent or "" does not count; a present user_id decides even when it is
    malformed (then the body has no key: a malformed user_id is nobody's person key), else anonymous_id.
    """
    fields = _ID_FIELDS.get(fmt)
    if fields is None or not isinstance(raw, dict):
        return None
    user_id, anonymous_id = (raw.get(name) for name in fields)
    if user_id not in (None, ""):
        return _identifier(user_id, fmt)
    if anonymous_id not in (None, ""):
        anonymous = _identifier(anonymous_id, fmt)
        return None if anonymous is None else f"{ANONYMOUS_PREFIX}{anonymous}"
    return None


def person_key_of_stored(raw_json: Any, fmt: Any) -> str | None:
    """``person_key_of`` for a stored row (raw body as JSON text); None, never an error, for unreadable text."""
    try:
        raw = orjson.loads(raw_json)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return person_key_of(raw, fmt)
