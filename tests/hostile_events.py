"""Hypothesis strategies for what clients may send ingest: arbitrary JSON, and events whose every field takes
boundary values of SPEC.md "Events" (largest money and quantities, 32/33 levels of nesting, control characters
in every identifier, years 1 and 9999 with offsets, huge, negative, float and boolean numbers, Unicode)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from libs.common.events import MAX_NESTING, format_timestamp

IDENTIFIER_FIELDS = ("event_id", "user_id", "anonymous_id", "session_id")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6),
                                                                                          children, max_size=4)),
    max_leaves=12,
)


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep (``{}`` is one level)."""
    value: dict[str, Any] = {}
    for level in range(depth - 1):
        value = {f"l{level}": value}
    return value


control_characters = st.sampled_from(["\x00", "\x01", "\t", "\n", "\x1f", "\x7f", "\x85", "\x9f"])
identifiers = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20),
    st.sampled_from(["u-1", "用户-1", "x" * 256, "x" * 257, "", " ", "😀" * 64]),
    st.tuples(st.text(max_size=4), control_characters, st.text(max_size=4)).map("".join),
    st.integers(-(2**70), 2**70), st.booleans(), st.none(),
)
money = st.one_of(
    st.sampled_from([0, 0.01, "0.01", 0.005, "1000000000000.00", 1000000000000, 1000000000000.01, 999999999999.99,
                     "1000000000000.01", -0.01, -0.0, 1e300, 2**64, 2**70, True, "abc", 12.345, "1e3", None]),
    st.decimals(min_value=0, max_value=10**13, places=2, allow_nan=False).map(str),
)
quantities = st.sampled_from([1, 2, 1_000_000, 1_000_001, 0, -1, 1.5, 1.0, True, 2**64, "3", None])


def timestamps(now: datetime) -> st.SearchStrategy[Any]:
    """Edges of the calendar and of the accepted window, with offsets that push them past year 1 or 9999."""
    recent = st.integers(-3 * 86_400, 600).map(lambda seconds: format_timestamp(now + timedelta(seconds=seconds)))
    return st.one_of(recent, st.sampled_from([
        "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59+14:00", "9999-12-31T23:59:59Z", "2026-02-30T00:00:00Z", "2026-05-01T10:00:00",
        "2026-05-01T24:00:00Z", "not a time", 1_700_000_000, None,
    ]))


def _product(draw: st.DrawFn) -> dict[str, Any]:
    return {"product_id": draw(identifiers), "name": draw(st.sampled_from(["真丝连衣裙", "a\x01b", "a\x00b", "x" * 4097])),
            "price": draw(money)}


@st.composite
def hostile_events(draw: st.DrawFn, now: datetime, person: str | None = None) -> dict[str, Any]:
    """A native event, mostly well formed, with one or more fields at or past a bound (or replaced by any JSON)."""
    kind = draw(st.sampled_from(["view", "add_to_cart", "inquiry", "order", "order", "review", "bogus"]))
    event: dict[str, Any] = {"type": kind, "user_id": person or "u-1", "occurred_at": format_timestamp(now)}
    if kind in ("view", "add_to_cart", "review"):
        event["product"] = {"product_id": "p-1", "price": "1.00"}
    if kind == "add_to_cart":
        event["quantity"] = draw(quantities)
    if kind == "inquiry":
        event["inquiry"] = {"inquiry_id": draw(identifiers),
                            "response_seconds": draw(st.sampled_from([0, 1.5, 1e308, -1, 10**12, None]))}
    if kind == "order":
        lines = draw(st.lists(st.fixed_dictionaries({"product_id": identifiers, "quantity": quantities,
                                                     "unit_price": money}), min_size=1, max_size=3))
        event["order"] = {"order_id": draw(identifiers), "status": draw(st.sampled_from(["completed", "refunded"])),
                          "items": lines, "total": draw(money), "coupon_code": draw(st.one_of(st.none(), identifiers))}
    if kind == "review":
        event["review"] = {"rating": draw(st.sampled_from([1, 5, 0, 6, 3.0, True])), "text": "好\x00" if
                           draw(st.booleans()) else "好评\n"}
    for field in draw(st.lists(st.sampled_from([*IDENTIFIER_FIELDS, "occurred_at", "product", "properties",
                                                "channel", "any"]), max_size=3)):
        if field in IDENTIFIER_FIELDS and not (person and field == "user_id"):
            event[field] = draw(identifiers)
        elif field == "occurred_at":
            event["occurred_at"] = draw(timestamps(now))
        elif field == "product" and kind != "order":
            event["product"] = _product(draw)
        elif field == "properties":
            event["properties"] = draw(st.one_of(st.sampled_from([MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1,
                                                                  MAX_NESTING + 40]).map(nested), json_values))
        elif field == "channel":
            event["channel"] = {"source": draw(st.one_of(st.sampled_from(["douyin", "a\x00", "", "x" * 257]),
                                                         json_values))}
        elif field == "any":
            event[draw(st.sampled_from(sorted(event)))] = draw(json_values)
    return event


def segment_messages(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    """Segment track calls with clock-skew corrections at the calendar's edges."""
    return st.fixed_dictionaries({
        "type": st.just("track"),
        "event": st.sampled_from(["Order Completed", "Product Viewed", "Product Added", "Unknown"]),
        "userId": identifiers,
        "timestamp": timestamps(now),
        "sentAt": st.one_of(st.none(), timestamps(now)),
        "properties": st.fixed_dictionaries({"product_id": identifiers, "order_id": identifiers, "total": money,
                                             "price": money, "quantity": quantities,
                                             "products": st.lists(st.fixed_dictionaries(
                                                 {"product_id": identifiers, "quantity": quantities, "price": money}),
                                                 max_size=2)}),
    })


def received_now() -> datetime:
    return datetime.now(UTC)
