"""Validate a request's events, publish the accepted and the rejected, answer per event.

SPEC.md "Ingest contract": 200 only after the broker acknowledged every accepted event (and every
rejected one on the rejected-events topic); otherwise BrokerUnavailable, and nothing was accepted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from libs.common.events import Event, EventRejected, ValidationContext, validate_event
from libs.common.kafka import EVENTS_TOPIC, REJECTED_TOPIC, Publisher
from libs.common.segment import Ignored, SegmentMessageError, map_message
from services.ingest.adapters.rejected import RejectedRecord

Format = Literal["native", "segment"]


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[RejectedRecord] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"accepted": len(self.events), "rejected": self.rejected, "ignored": self.ignored}


def validate_one(
    raw: Any, *, index: int, fmt: Format, context: ValidationContext, batch_sent_at: Any = None,
    segment_defaults: dict[str, Any] | None = None,
) -> Event | Ignored:
    """One client event (native or Segment) to a published Event, or raise EventRejected."""
    if fmt == "native":
        return validate_event(raw, index=index, context=context)
    if isinstance(raw, dict) and segment_defaults:
        raw = {**segment_defaults, **raw}
    try:
        mapped = map_message(raw, received_at=context.received_at, batch_sent_at=batch_sent_at)
    except SegmentMessageError as exc:
        raise EventRejected(str(exc)) from None
    if isinstance(mapped, Ignored):
        return mapped
    return validate_event(mapped, index=index, context=context, native=False)


def sort_out(
    raws: Sequence[Any], *, fmt: Format, route: str, context: ValidationContext, batch_sent_at: Any = None,
    segment_defaults: dict[str, Any] | None = None,
) -> Outcome:
    """Validate every event of a request; nothing is published yet."""
    outcome = Outcome()
    for index, raw in enumerate(raws):
        try:
            result = validate_one(raw, index=index, fmt=fmt, context=context, batch_sent_at=batch_sent_at,
                                  segment_defaults=segment_defaults)
        except EventRejected as exc:
            outcome.rejected.append({"index": index, "error": exc.reason})
            outcome.rejections.append(
                RejectedRecord(rejection_id=str(uuid.uuid4()), received_at=context.received_at, format=fmt,
                               route=route, index=index, error=exc.reason, raw=raw)
            )
            continue
        if isinstance(result, Ignored):
            outcome.ignored.append({"index": index, "reason": result.reason})
        else:
            outcome.events.append(result)
    return outcome


async def publish(outcome: Outcome, publisher: Publisher, *, deadline_seconds: float) -> None:
    """Publish accepted events keyed by person key, and rejections; raise BrokerUnavailable on failure."""
    accepted = [(event.person_key.encode(), event.to_json()) for event in outcome.events]
    rejections = [
        (record.rejection_id.encode(), orjson.dumps(record.model_dump(mode="json"))) for record in outcome.rejections
    ]
    sends = [publisher.publish_many(EVENTS_TOPIC, accepted, wait_seconds=deadline_seconds)] if accepted else []
    if rejections:
        sends.append(publisher.publish_many(REJECTED_TOPIC, rejections, wait_seconds=deadline_seconds))
    await asyncio.gather(*sends)
