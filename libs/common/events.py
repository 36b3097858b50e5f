"""The behaviour events of SPEC.md "Events", validated and normalised.

One model serves both sides of Kafka: ingest validates client input into an ``Event`` (with a
``ValidationContext`` carrying the clock and the deployment's currency), and consumers parse the
published JSON back into the same model (no context: those checks were done at the door).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

EVENT_TYPES = ("view", "add_to_cart", "inquiry", "order", "review")
# `identify` is not a behaviour event: it carries Segment identify traits to the customer profile.
EventType = Literal["view", "add_to_cart", "inquiry", "order", "review", "identify"]
MAX_FUTURE = timedelta(minutes=5)
DIRECT = "(direct)"
ANONYMOUS_PREFIX = "anon:"

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
# Chinese operators name tiers 形象款/引流款/利润款/补充款 (SPEC "Product matrix").
_TIER_ALIASES = {"形象款": "flagship", "引流款": "traffic_driver", "利润款": "profit", "补充款": "long_tail"}


def parse_rfc3339(value: Any) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp needs a UTC offset")
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string, e.g. 2026-05-01T10:00:00+08:00")
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not an RFC 3339 timestamp with an offset, e.g. 2026-05-01T10:00:00+08:00"
        )
    date, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds: drop finer digits rather than fail
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        # OverflowError: a valid date whose offset takes it past year 1 or 9999 (e.g. 0001-01-01T00:00:00+01:00).
        raise ValueError(f"{value!r} is not a valid date and time: {exc}") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(moment: datetime) -> int:
    """Exact microseconds since the Unix epoch (how services store times: integer compares on both databases)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_epoch_micros(micros: int) -> datetime:
    """The aware UTC datetime of ``epoch_micros``."""
    return _EPOCH + timedelta(microseconds=micros)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, the one timestamp form shoploop writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# SPEC.md "Events" bounds. They sit on the published models, so every consumer parses with the limits ingest
# checked: whatever ingest accepts, a consumer can read, store on both databases and sum without overflow.
EARLIEST = _EPOCH
MAX_MONEY = Decimal("1000000000000.00")
MAX_QUANTITY = 1_000_000
MAX_LINE_AMOUNT = MAX_MONEY
MAX_NESTING = 32
MAX_RESPONSE_SECONDS = 100 * 366 * 86_400  # a century: keeps the median's sum of two finite
# Identifiers: no control character (Unicode Cc). Free text: no NUL, which PostgreSQL text cannot hold (other
# control characters, tabs and newlines included, are stored by both databases as sent).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]*$"
NO_NUL = r"^[^\x00]*$"
_PATTERN_REASONS = {NO_CONTROL_CHARACTERS: "must not contain control characters (U+0000-U+001F, U+007F-U+009F)",
                    NO_NUL: "must not contain the NUL character (U+0000)"}

Timestamp = Annotated[datetime, BeforeValidator(parse_rfc3339)]
Moment = Annotated[AwareDatetime, Field(ge=EARLIEST)]
Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)]
Text = Annotated[str, Field(max_length=4096, pattern=NO_NUL)]
Label = Annotated[str, Field(max_length=256, pattern=NO_NUL)]
Money = Annotated[Decimal, Field(ge=0, le=MAX_MONEY, decimal_places=2)]
Count = Annotated[int, Strict(), Field(ge=1, le=MAX_QUANTITY)]


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of objects and arrays in a JSON value (a scalar is 0, ``{}`` 1), counted up to ``limit + 1``."""
    depth, level = 0, [value]
    while level and depth <= limit:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return depth


def _shallow(value: dict[str, Any]) -> dict[str, Any]:
    if nesting_depth(value, MAX_NESTING) > MAX_NESTING:
        raise ValueError(f"nests deeper than {MAX_NESTING} levels")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_shallow)]


def _money_not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, float):
        # repr gives the shortest decimal that round-trips, i.e. what the client wrote in JSON.
        return Decimal(repr(value))
    return value


def _no_negative_zero(value: Decimal) -> Decimal:
    return abs(value) if value.is_zero() else value


Amount = Annotated[Money, BeforeValidator(_money_not_bool), AfterValidator(_no_negative_zero)]


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """What ingest checks at the door: the clock and the deployment's one currency."""

    received_at: datetime
    currency: str


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def _check_currency(currency: str | None, info: ValidationInfo) -> str | None:
    context = info.context
    if currency is not None and isinstance(context, ValidationContext) and currency != context.currency:
        raise ValueError(f"currency {currency!r} is not this deployment's currency {context.currency!r}")
    return currency


Tier = Literal["flagship", "traffic_driver", "profit", "long_tail"]
PlainMoney = Money


# Two layers: the *Data models are the published form, with only the constraints pydantic checks in
# Rust, so consumers parse an event in about 9 us. The ingest-side subclasses add the Python rules
# (aliases, per-type parts, the clock, the currency): about 25 us, paid once, at the door.


class ChannelData(_Part):
    source: Label = DIRECT
    medium: Label | None = None
    campaign: Label | None = None
    term: Label | None = None
    content: Label | None = None


class Channel(ChannelData):
    @field_validator("source", mode="before")
    @classmethod
    def _absent_source_is_direct(cls, value: Any) -> Any:
        return DIRECT if value is None or value == "" else value


class ProductData(_Part):
    product_id: Identifier
    name: Text | None = None
    category: Text | None = None
    price: PlainMoney | None = None
    tier: Tier | None = None


class Product(ProductData):
    price: Amount | None = None

    @field_validator("tier", mode="before")
    @classmethod
    def _tier_alias(cls, value: Any) -> Any:
        return _TIER_ALIASES.get(value, value) if isinstance(value, str) else value


class Inquiry(_Part):
    inquiry_id: Identifier
    topic: Text | None = None
    response_seconds: Annotated[float, Field(ge=0, le=MAX_RESPONSE_SECONDS, allow_inf_nan=False)] | None = None


class OrderItemData(_Part):
    product_id: Identifier
    category: Text | None = None
    quantity: Count
    unit_price: PlainMoney

    @model_validator(mode="after")
    def _line_amount(self) -> OrderItemData:
        if self.quantity * self.unit_price > MAX_LINE_AMOUNT:
            raise ValueError(f"quantity x unit_price is {self.quantity * self.unit_price}; the limit is {MAX_LINE_AMOUNT}")
        return self


class OrderItem(OrderItemData):
    unit_price: Amount


class OrderData(_Part):
    order_id: Identifier
    status: Literal["completed", "refunded"]
    items: list[OrderItemData] = Field(default_factory=list, max_length=1000)
    total: PlainMoney | None = None
    discount: PlainMoney | None = None
    coupon_code: Identifier | None = None
    currency: Annotated[str, Field(max_length=16)] | None = None
    refund_amount: PlainMoney | None = None
    refund_reason: Text | None = None


class Order(OrderData):
    items: list[OrderItem] = Field(default_factory=list, max_length=1000)
    total: Amount | None = None
    discount: Amount | None = None
    refund_amount: Amount | None = None

    _currency = field_validator("currency")(_check_currency)

    @model_validator(mode="after")
    def _status_rules(self) -> Order:
        if self.status == "completed":
            if self.total is None:
                raise ValueError("a completed order needs total")
            if not self.items:
                raise ValueError("a completed order needs at least one item")
            if self.refund_amount is not None:
                raise ValueError("refund_amount belongs on a refunded order event")
        return self


class Review(_Part):
    rating: Annotated[int, Strict(), Field(ge=1, le=5)]
    text: Annotated[str, Field(max_length=16_384, pattern=NO_NUL)] | None = None
    order_id: Identifier | None = None


_PART_OF_TYPE = {"inquiry": "inquiry", "order": "order", "review": "review"}
_PRODUCT_REQUIRED = ("view", "add_to_cart", "review")


class PublishedEvent(BaseModel):
    """One behaviour event as published on ``shoploop.events.v1`` (SPEC.md "Events"), as consumers read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier | None = None
    type: EventType
    person_key: Annotated[str, Field(max_length=len(ANONYMOUS_PREFIX) + 256)] = ""
    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    occurred_at: Moment
    received_at: Moment | None = None
    session_id: Identifier | None = None
    channel: ChannelData = Field(default_factory=ChannelData)
    product: ProductData | None = None
    quantity: Count = 1
    inquiry: Inquiry | None = None
    order: OrderData | None = None
    review: Review | None = None
    traits: JsonObject | None = None
    properties: JsonObject | None = None

    def to_json(self) -> bytes:
        """The published form: UTC timestamps, money as exact decimal strings, no nulls."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> PublishedEvent:
        """Parse a published event (the consumer side: no ingest-time rules)."""
        return PublishedEvent.model_validate_json(payload)


class Event(PublishedEvent):
    """A client's event validated at ingest by every rule of SPEC.md "Events"."""

    occurred_at: Annotated[Moment, BeforeValidator(parse_rfc3339)]
    received_at: Annotated[Moment, BeforeValidator(parse_rfc3339)] | None = None
    channel: Channel = Field(default_factory=Channel)
    product: Product | None = None
    order: Order | None = None

    @model_validator(mode="before")
    @classmethod
    def _derive_person_key(cls, data: Any) -> Any:
        if isinstance(data, dict):
            user_id, anonymous_id = data.get("user_id"), data.get("anonymous_id")
            if user_id in (None, "") and anonymous_id in (None, ""):
                raise ValueError("one of user_id or anonymous_id is required")
            # An empty id counts as absent (it must not name the person, nor fail the min-length rule).
            data = {name: value for name, value in data.items()
                    if not (name in ("user_id", "anonymous_id") and value == "")}
            person = user_id if user_id not in (None, "") else anonymous_id
            # A non-string id fails on its own field; do not also blame person_key, which clients never send.
            data["person_key"] = "" if not isinstance(person, str) else (
                person if person is user_id else f"{ANONYMOUS_PREFIX}{person}"
            )
            if data.get("channel") is None:
                data.pop("channel", None)
        return data

    @model_validator(mode="after")
    def _type_rules(self, info: ValidationInfo) -> Event:
        if self.type in _PRODUCT_REQUIRED and self.product is None:
            raise ValueError(f"a {self.type} event needs product")
        for event_type, part in _PART_OF_TYPE.items():
            present = getattr(self, part) is not None
            if self.type == event_type and not present:
                raise ValueError(f"an {part} event needs {part}" if part != "review" else "a review event needs review")
            if self.type != event_type and present:
                raise ValueError(f"{part} belongs only on {event_type} events, not on {self.type}")
        if self.type == "identify" and self.traits is None:
            raise ValueError("an identify call needs traits")
        if self.type != "identify" and self.traits is not None:
            raise ValueError("traits belong only on identify calls")
        context = info.context
        if isinstance(context, ValidationContext) and self.occurred_at > context.received_at + MAX_FUTURE:
            raise ValueError(
                f"occurred_at {format_timestamp(self.occurred_at)} is more than 5 minutes in the future "
                f"(server time {format_timestamp(context.received_at)})"
            )
        return self


def describe_errors(error: ValidationError) -> str:
    """A client-readable reason: ``path: message`` for each problem, joined by ``; ``."""
    parts = []
    for item in error.errors(include_url=False):
        path = "".join(
            f"[{segment}]" if isinstance(segment, int) else f".{segment}" for segment in item["loc"]
        ).lstrip(".")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (custom data goes under properties)"
        elif item["type"] == "string_pattern_mismatch" and item.get("ctx", {}).get("pattern") in _PATTERN_REASONS:
            message = _PATTERN_REASONS[item["ctx"]["pattern"]]
        elif item["type"] == "literal_error" and path == "type":
            message = f"type must be one of {', '.join(EVENT_TYPES)}"
        parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)


class EventRejected(ValueError):
    """An event that fails SPEC.md's rules; ``reason`` is what the client sees."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Events without an event_id get one derived from their content and place in the request, so that a
# client retrying a request after a 503 is not counted twice (SPEC: "the client may retry safely").
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d7a52-3c38-4a43-9a55-2b8f4e0f6a01")


def derived_event_id(raw: dict[str, Any], index: int) -> str:
    """A UUID that is the same for the same event content at the same request index."""
    canonical = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS) + b"#" + str(index).encode()
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, canonical.decode("utf-8", "surrogatepass")))


def validate_event(raw: Any, *, index: int, context: ValidationContext, native: bool = True) -> Event:
    """Validate one client event into the published form, or raise ``EventRejected``."""
    if not isinstance(raw, dict):
        raise EventRejected("an event must be a JSON object")
    if native and raw.get("type") not in EVENT_TYPES:
        raise EventRejected(f"type: type must be one of {', '.join(EVENT_TYPES)}")
    data = dict(raw)
    if data.get("event_id") is None:
        data["event_id"] = derived_event_id(raw, index)
    data["received_at"] = context.received_at
    try:
        return Event.model_validate(data, context=context)
    except ValidationError as exc:
        raise EventRejected(describe_errors(exc)) from None
