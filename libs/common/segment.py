"""Segment HTTP Tracking API messages mapped to shoploop events (SPEC.md "Segment-compatible form").

Track names follow Segment's E-commerce spec v2; ``Inquiry Submitted`` is shoploop's extension.
A message is either mapped to a native event dict (validated afterwards like any native event) or
answered as ignored with a reason, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.common.events import format_timestamp, parse_rfc3339

TRACK_TYPES = {
    "Product Viewed": "view",
    "Product Added": "add_to_cart",
    "Order Completed": "order",
    "Order Refunded": "order",
    "Product Reviewed": "review",
    "Inquiry Submitted": "inquiry",
}
_CAMPAIGN_TO_CHANNEL = {"source": "source", "medium": "medium", "name": "campaign", "term": "term", "content": "content"}


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


class SegmentMessageError(ValueError):
    """The message looks like Segment's but cannot be mapped (its reason is shown to the client)."""


def _present(mapping: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: mapping[name] for name in names if mapping.get(name) is not None}


def _product(properties: dict[str, Any]) -> dict[str, Any] | None:
    product_id = properties.get("product_id", properties.get("sku"))
    if product_id is None:
        return None
    return {"product_id": str(product_id), **_present(properties, "name", "category", "price", "tier")}


def _order_items(properties: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for product in properties.get("products") or []:
        if not isinstance(product, dict):
            raise SegmentMessageError("properties.products must be a list of objects")
        product_id = product.get("product_id", product.get("sku"))
        items.append(
            {
                "product_id": None if product_id is None else str(product_id),
                "quantity": product.get("quantity", 1),
                "unit_price": product.get("price"),
                **_present(product, "category"),
            }
        )
    return items


def _order(properties: dict[str, Any], status: str) -> dict[str, Any]:
    order: dict[str, Any] = {
        "order_id": properties.get("order_id"),
        "status": status,
        "items": _order_items(properties),
        **_present(properties, "discount", "currency"),
    }
    if properties.get("coupon") is not None:
        order["coupon_code"] = properties["coupon"]
    # E-commerce v2: `total` is what the customer paid; older SDKs send only `revenue`.
    total = properties.get("total", properties.get("revenue"))
    if status == "completed":
        order["total"] = total
    else:
        if total is not None:
            order["refund_amount"] = total
        order.update(_present(properties, "refund_reason"))
    return order


def _typed_parts(event_type: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    product = _product(properties)
    if event_type == "add_to_cart" and properties.get("quantity") is not None:
        parts["quantity"] = properties["quantity"]
    if event_type == "order":
        parts["order"] = _order(properties, "refunded" if name == "Order Refunded" else "completed")
        return parts
    if event_type == "review":
        parts["review"] = {
            "rating": properties.get("rating"),
            **({"text": properties["review_body"]} if properties.get("review_body") is not None else {}),
            **_present(properties, "order_id"),
        }
    if event_type == "inquiry":
        parts["inquiry"] = {
            "inquiry_id": properties.get("inquiry_id"),
            **_present(properties, "topic", "response_seconds"),
        }
    if product is not None:
        parts["product"] = product
    return parts


def _identifier(value: Any) -> Any:
    # Some SDKs send numeric ids; Segment itself treats them as strings.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def message_timestamp(message: dict[str, Any], *, received_at: datetime, batch_sent_at: Any) -> str:
    """Segment's clock-skew rule: timestamp = receivedAt - (sentAt - originalTimestamp) when sentAt is given."""
    original = message.get("timestamp") or message.get("originalTimestamp")
    if original is None:
        return format_timestamp(received_at)
    sent_at = message.get("sentAt", batch_sent_at)
    if sent_at is None:
        return original
    try:
        corrected = received_at - (parse_rfc3339(sent_at) - parse_rfc3339(original))
    except ValueError as exc:
        raise SegmentMessageError(f"timestamp/sentAt: {exc}") from None
    except OverflowError:
        raise SegmentMessageError(
            f"timestamp/sentAt: the clock-skew correction receivedAt - (sentAt - timestamp) lies outside years"
            f" 1-9999 (sentAt {sent_at!r}, timestamp {original!r})") from None
    return format_timestamp(corrected)


def map_message(
    message: Any, *, received_at: datetime, batch_sent_at: Any = None, default_type: str | None = None
) -> dict[str, Any] | Ignored:
    """Map one Segment message to a native event dict, or say why it is ignored."""
    if not isinstance(message, dict):
        raise SegmentMessageError("a message must be a JSON object")
    call = message.get("type", default_type)
    if call not in ("track", "identify"):
        return Ignored(f"Segment {call!r} calls are not used by shoploop (only track and identify are)")
    context = message.get("context") or {}
    properties = message.get("properties") or {}
    if not isinstance(context, dict) or not isinstance(properties, dict):
        raise SegmentMessageError("context and properties must be JSON objects")
    event: dict[str, Any] = {
        "user_id": _identifier(message.get("userId")),
        "anonymous_id": _identifier(message.get("anonymousId")),
        "occurred_at": message_timestamp(message, received_at=received_at, batch_sent_at=batch_sent_at),
    }
    if message.get("messageId") is not None:
        event["event_id"] = str(message["messageId"])
    campaign = context.get("campaign")
    if isinstance(campaign, dict):
        event["channel"] = {
            field: campaign[key] for key, field in _CAMPAIGN_TO_CHANNEL.items() if campaign.get(key) is not None
        }
    if call == "identify":
        event["type"] = "identify"
        event["traits"] = message.get("traits") or context.get("traits") or {}
        return event
    name = message.get("event")
    event_type = TRACK_TYPES.get(name) if isinstance(name, str) else None
    if event_type is None:
        return Ignored(f"track event {name!r} has no shoploop mapping (mapped: {', '.join(TRACK_TYPES)})")
    event["type"] = event_type
    event.update(_typed_parts(event_type, name, properties))
    if properties:
        event["properties"] = properties
    return event
