"""``PublishedEvent``'s validation compiled for the form ingest publishes, for consumers' hot path.

A consumer must accept exactly the records ``PublishedEvent.from_json`` accepts (libs/common/events.py is the one
definition). Parsing every record into that pydantic model costs about 9 us on a quiet core, a quarter of a
consumer's time per event. Nearly every record is in the one form ingest writes (``PublishedEvent.to_json``: no
nulls, UTC timestamps ending in ``Z``, money as plain decimal strings), and for that form the model's constraints
are a few type and length checks on the object orjson parses. ``published_fields`` makes exactly those checks and
answers None for anything it does not recognise (any null, an escape in a string, another timestamp or number
form, a value past a bound, invalid JSON): the caller then lets ``PublishedEvent`` decide, so that a record is
accepted or refused exactly as before. tests/unit/common/test_published_json.py holds the two equal (and the
funnel's rows of either) on hostile records, every value of a published record at each bound of SPEC.md
"Events", and published records with any value replaced by arbitrary JSON.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson

from libs.common.events import (
    ANONYMOUS_PREFIX,
    MAX_NESTING,
    MAX_QUANTITY,
    MAX_RESPONSE_SECONDS,
    PublishedEvent,
    nesting_depth,
)

T = TypeVar("T")

# A JSON string holds a control character only as an escape (a backslash), as the byte 0x7f, or as a two-byte
# UTF-8 sequence C2 80..C2 9F: a record with none of them holds none in any string, so that no identifier or
# text needs its own scan. Records with an escape (rare: quotes or newlines in free text) are left to the model.
_C1_CONTROL = re.compile(rb"\xc2[\x80-\x9f]").search
# Timestamps as ingest writes them (format_timestamp, or pydantic's JSON form of a UTC datetime).
_UTC_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z", re.ASCII).fullmatch
# Money as str(Decimal) writes an amount of at most 2 decimals below 10^13: no sign, exponent or leading zero.
# The bound itself (1,000,000,000,000.00) is checked on the integer cents.
_MONEY = re.compile(r"(0|[1-9]\d{0,12})(?:\.(\d{1,2}))?", re.ASCII).fullmatch
_MAX_CENTS = 100_000_000_000_000
_EARLIEST_YEAR = 1970
_MAX_ID, _MAX_TEXT, _MAX_LABEL, _MAX_REVIEW_TEXT = 256, 4096, 256, 16_384
_MAX_PERSON_KEY = len(ANONYMOUS_PREFIX) + _MAX_ID

_EVENT_KEYS = frozenset(("event_id", "type", "person_key", "user_id", "anonymous_id", "occurred_at", "received_at",
                         "session_id", "channel", "product", "quantity", "inquiry", "order", "review", "traits",
                         "properties"))
_IDENTIFIERS = ("event_id", "user_id", "anonymous_id", "session_id")
_CHANNEL_KEYS = frozenset(("source", "medium", "campaign", "term", "content"))
_PRODUCT_KEYS = frozenset(("product_id", "name", "category", "price", "tier"))
_INQUIRY_KEYS = frozenset(("inquiry_id", "topic", "response_seconds"))
_ORDER_KEYS = frozenset(("order_id", "status", "items", "total", "discount", "coupon_code", "currency",
                         "refund_amount", "refund_reason"))
_ITEM_KEYS = frozenset(("product_id", "category", "quantity", "unit_price"))
_REVIEW_KEYS = frozenset(("rating", "text", "order_id"))
_EVENT_TYPES = frozenset(("view", "add_to_cart", "inquiry", "order", "review", "identify"))
_TIERS = frozenset(("flagship", "traffic_driver", "profit", "long_tail"))
_STATUSES = frozenset(("completed", "refunded"))


class _NotCanonical(Exception):
    """The record is not one this module can vouch for: ``PublishedEvent`` decides."""


def _object(value: Any, keys: frozenset[str]) -> dict[str, Any]:
    if type(value) is not dict or not value.keys() <= keys:
        raise _NotCanonical
    return value


def _identifier(value: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= _MAX_ID:
        raise _NotCanonical


def _text(value: Any, limit: int = _MAX_TEXT) -> None:
    if type(value) is not str or len(value) > limit:
        raise _NotCanonical


def _one_of(value: Any, allowed: frozenset[str]) -> None:
    if type(value) is not str or value not in allowed:
        raise _NotCanonical


def _count(value: Any, limit: int = MAX_QUANTITY) -> None:
    # Strict int in the model: a JSON number with a fraction or exponent (a float here) is refused there.
    if type(value) is not int or not 1 <= value <= limit:
        raise _NotCanonical


def _cents(value: Any) -> int:
    """``cents(Decimal(value))`` for money as ingest publishes it."""
    match = _MONEY(value) if type(value) is str else None
    if match is None:
        raise _NotCanonical
    whole, fraction = match.groups()
    amount = int(whole) * 100 + (int(fraction) * (10 if len(fraction) == 1 else 1) if fraction else 0)
    if amount > _MAX_CENTS:
        raise _NotCanonical
    return amount


def _moment(value: Any) -> datetime:
    if type(value) is not str or _UTC_TIMESTAMP(value) is None:
        raise _NotCanonical
    try:
        moment = datetime.fromisoformat(value)  # the form matched: exactly what the model reads from it
    except ValueError:
        raise _NotCanonical from None
    if moment.year < _EARLIEST_YEAR:
        raise _NotCanonical
    return moment


@functools.lru_cache(maxsize=256)
def _received_at(value: str) -> datetime:
    # One value per ingest request, shared by its events: parsed once.
    return _moment(value)


def _response_seconds(value: Any) -> float:
    # The model's float field takes a JSON integer too (as a float); integers past 2^53 are left to it.
    if type(value) is int and 0 <= value < 2**53:
        value = float(value)
    elif type(value) is not float:
        raise _NotCanonical
    if not 0.0 <= value <= MAX_RESPONSE_SECONDS:  # orjson parses no NaN or infinity
        raise _NotCanonical
    return value


def _check_event(fields: dict[str, Any]) -> None:
    """Every constraint of ``PublishedEvent`` on a record with no control character in any string; money becomes
    integer cents and timestamps datetimes, in place."""
    if type(fields) is not dict or not fields.keys() <= _EVENT_KEYS:
        raise _NotCanonical
    _one_of(fields.get("type"), _EVENT_TYPES)
    for name in _IDENTIFIERS:
        if name in fields:
            _identifier(fields[name])
    fields["occurred_at"] = _moment(fields.get("occurred_at"))
    if "received_at" in fields:
        received_at = fields["received_at"]
        if type(received_at) is not str:
            raise _NotCanonical
        fields["received_at"] = _received_at(received_at)
    if "person_key" in fields:
        _text(fields["person_key"], _MAX_PERSON_KEY)
    if "quantity" in fields:
        _count(fields["quantity"])
    if "channel" in fields:
        for value in _object(fields["channel"], _CHANNEL_KEYS).values():
            _text(value, _MAX_LABEL)
    if "product" in fields:
        product = _object(fields["product"], _PRODUCT_KEYS)
        _identifier(product.get("product_id"))
        for name in ("name", "category"):
            if name in product:
                _text(product[name])
        if "price" in product:
            product["price"] = _cents(product["price"])
        if "tier" in product:
            _one_of(product["tier"], _TIERS)
    if "inquiry" in fields:
        inquiry = _object(fields["inquiry"], _INQUIRY_KEYS)
        _identifier(inquiry.get("inquiry_id"))
        if "topic" in inquiry:
            _text(inquiry["topic"])
        if "response_seconds" in inquiry:
            inquiry["response_seconds"] = _response_seconds(inquiry["response_seconds"])
    if "order" in fields:
        _check_order(_object(fields["order"], _ORDER_KEYS))
    if "review" in fields:
        review = _object(fields["review"], _REVIEW_KEYS)
        _count(review.get("rating"), 5)
        if "text" in review:
            _text(review["text"], _MAX_REVIEW_TEXT)
        if "order_id" in review:
            _identifier(review["order_id"])
    for name in ("traits", "properties"):
        if name in fields:
            value = fields[name]
            if type(value) is not dict or nesting_depth(value, MAX_NESTING) > MAX_NESTING or _wide_number(value):
                raise _NotCanonical


def _wide_number(value: Any) -> bool:
    """A float of 2^63 or more in magnitude anywhere in ``value``: orjson reads an integer past 64 bits as a float
    where the model keeps the integer (which segmentation cannot then write as JSON: the record is refused), so
    such a record is left to the model (a float written as such goes there too, and is read the same)."""
    kind = type(value)
    if kind is float:
        return not -_WIDE < value < _WIDE
    if kind is dict:
        return any(map(_wide_number, value.values()))
    if kind is list:
        return any(map(_wide_number, value))
    return False


_WIDE = float(2**63)


def _check_order(order: dict[str, Any]) -> None:
    _identifier(order.get("order_id"))
    _one_of(order.get("status"), _STATUSES)
    for name in ("total", "discount", "refund_amount"):
        if name in order:
            order[name] = _cents(order[name])
    if "coupon_code" in order:
        _identifier(order["coupon_code"])
    if "currency" in order:
        _text(order["currency"], 16)
    if "refund_reason" in order:
        _text(order["refund_reason"])
    items = order.get("items", ())
    if type(items) is not list or len(items) > 1000:
        raise _NotCanonical
    for item in items:
        _object(item, _ITEM_KEYS)
        _identifier(item.get("product_id"))
        if "category" in item:
            _text(item["category"])
        _count(item.get("quantity"))
        item["unit_price"] = _cents(item.get("unit_price"))


def published_fields(payload: bytes) -> dict[str, Any] | None:
    """The record's JSON object when ``PublishedEvent.from_json`` accepts it and it is in the published form
    this module checks; None when the model has to decide (it may accept or refuse). In the object timestamps
    are aware UTC datetimes and money integer cents (``cents`` of the model's Decimal); other values as parsed,
    absent fields absent (their defaults are the model's: channel source "(direct)", quantity 1)."""
    if b"\\" in payload or b"\x7f" in payload or (b"\xc2" in payload and _C1_CONTROL(payload)):
        return None
    try:
        fields = orjson.loads(payload)
        _check_event(fields)
    except (_NotCanonical, orjson.JSONDecodeError):
        return None
    return fields


def published_decoder(of_model: Callable[[PublishedEvent], T], of_fields: Callable[[dict[str, Any]], T]
                      ) -> Callable[[bytes], T]:
    """A consumer's decode step: ``of_fields`` of what ``published_fields`` checked, else ``of_model`` of the
    ``PublishedEvent`` (which raises pydantic's ValidationError for a record that is not one). The two must give
    the same of any record both accept (tests/unit/common/test_published_json.py)."""

    def decode(payload: bytes) -> T:
        fields = published_fields(payload)
        if fields is None:
            return of_model(PublishedEvent.from_json(payload))
        return of_fields(fields)

    return decode
