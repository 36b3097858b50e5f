"""The person key of a rejected body: the key an accepted event would have had, None otherwise, never an error."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from libs.common.events import ValidationContext
from services.ingest.intake import validate_one
from services.ingest.person_keys import person_key_of, person_key_of_stored

CONTEXT = ValidationContext(received_at=datetime(2026, 5, 1, 12, 0, tzinfo=UTC), currency="CNY")
VIEW = {"type": "view", "occurred_at": "2026-05-01T10:00:00+08:00", "product": {"product_id": "p-1"}}
TRACK = {"type": "track", "event": "Product Viewed", "timestamp": "2026-05-01T10:00:00Z",
         "properties": {"product_id": "p-1"}}


@pytest.mark.parametrize(
    ("ids", "key"),
    [
        ({"user_id": "u-1"}, "u-1"),
        ({"user_id": "u-1", "anonymous_id": "a-1"}, "u-1"),
        ({"anonymous_id": "a-1"}, "anon:a-1"),
        ({"user_id": "", "anonymous_id": "a-1"}, "anon:a-1"),
        ({"user_id": None, "anonymous_id": "a-1"}, "anon:a-1"),
        ({"user_id": "顾客-李雷"}, "顾客-李雷"),
        ({"user_id": "u" * 256}, "u" * 256),
    ],
)
def test_a_native_body_gets_the_key_its_accepted_event_would_have(ids, key):
    raw = VIEW | ids
    assert person_key_of(raw, "native") == key
    assert validate_one(raw, index=0, fmt="native", context=CONTEXT).person_key == key
    # rejected for another reason (a bad timestamp): the key is the same
    assert person_key_of(raw | {"occurred_at": "yesterday"}, "native") == key


@pytest.mark.parametrize(
    ("ids", "key"),
    [
        ({"userId": "u-1"}, "u-1"),
        ({"userId": 42}, "42"),
        ({"anonymousId": "a-1"}, "anon:a-1"),
        ({"anonymousId": 7}, "anon:7"),
        ({"userId": "", "anonymousId": "a-1"}, "anon:a-1"),
    ],
)
def test_a_segment_body_gets_the_key_its_accepted_event_would_have(ids, key):
    raw = TRACK | ids
    assert person_key_of(raw, "segment") == key
    assert validate_one(raw, index=0, fmt="segment", context=CONTEXT).person_key == key
    # the native names mean nothing on the Segment routes, and the other way round
    assert person_key_of({"user_id": "u-1"}, "segment") is None
    assert person_key_of({"userId": "u-1"}, "native") is None


MALFORMED: list[Any] = [
    None, 5, "u-1", ["u-1"], [], {},
    {"user_id": None, "anonymous_id": None}, {"user_id": "", "anonymous_id": ""},
    {"user_id": True}, {"user_id": 1.5}, {"user_id": ["u-1"]}, {"user_id": {"id": "u-1"}},
    {"user_id": "u" * 257},
    # not storable in a PostgreSQL column (ingest accepts a NUL; a lone surrogate never gets past JSON parsing)
    {"user_id": "u-\x00-1"}, {"user_id": "\ud800"},
    # a present but malformed user_id decides, as in Event: the anonymous id is not taken instead
    {"user_id": {"id": "u-1"}, "anonymous_id": "a-1"},
    {"anonymous_id": False}, {"anonymous_id": ["a"]}, {"anonymous_id": "a" * 257},
]


@pytest.mark.parametrize("raw", MALFORMED, ids=repr)
@pytest.mark.parametrize("fmt", ["native", "segment", "unknown"])
def test_a_body_naming_no_person_gets_none_and_never_an_error(raw, fmt):
    segment_raw = ({{"user_id": "userId", "anonymous_id": "anonymousId"}.get(name, name): value
                    for name, value in raw.items()} if isinstance(raw, dict) else raw)
    assert person_key_of(raw if fmt != "segment" else segment_raw, fmt) is None


def test_malformed_user_ids_are_rejected_at_ingest_so_no_event_has_them_as_key():
    # Why None is right for them: no accepted event carries such a key (numbers aside on the Segment routes).
    unstorable = ("u-\x00-1", "\ud800")
    for raw in MALFORMED:
        if isinstance(raw, dict) and raw.get("user_id") not in (None, "", *unstorable):
            with pytest.raises(ValueError):
                validate_one(VIEW | raw, index=0, fmt="native", context=CONTEXT)


def test_a_numeric_id_is_a_key_on_the_segment_routes_only():
    assert person_key_of(VIEW | {"user_id": 42}, "native") is None
    with pytest.raises(ValueError):
        validate_one(VIEW | {"user_id": 42}, index=0, fmt="native", context=CONTEXT)
    assert person_key_of(TRACK | {"userId": 42}, "segment") == "42"


@pytest.mark.parametrize("stored", [b"not json", "", "{", None, 5, "[]", '"u-1"', '{"user_id": 5}'])
def test_an_unreadable_stored_body_gets_none(stored):
    assert person_key_of_stored(stored, "native") is None


def test_a_stored_body_gets_its_key():
    assert person_key_of_stored(orjson.dumps(VIEW | {"user_id": "u-9"}).decode(), "native") == "u-9"
    assert person_key_of_stored(orjson.dumps(TRACK | {"anonymousId": "a-9"}), "segment") == "anon:a-9"
