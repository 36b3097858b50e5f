"""Erasure requests on ``shoploop.privacy.v1`` (SPEC.md "Customers": erasure).

Every service that stores personal data consumes this topic and removes the person's personal data;
aggregate counts already published stay. The record is keyed by person key.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field

from libs.common.events import Timestamp, format_timestamp
from libs.common.kafka import PRIVACY_TOPIC, BatchHandler, Publisher, Subscription

# Pseudonyms are uuid5 of the request id in this namespace (a fixed, arbitrary one).
_PSEUDONYM_NAMESPACE = uuid.UUID("0b5bb0a6-58f4-4f0e-9a59-8f1f3a7b2c11")


class ErasureRequest(BaseModel):
    """Remove this person's personal data; ``request_id`` is the idempotency key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    person_key: str = Field(min_length=1, max_length=300)
    requested_at: Timestamp
    request_id: str = Field(min_length=1, max_length=256)

    @classmethod
    def new(cls, person_key: str, requested_at: datetime) -> ErasureRequest:
        return cls(person_key=person_key, requested_at=requested_at, request_id=str(uuid.uuid4()))

    @classmethod
    def from_json(cls, payload: bytes) -> ErasureRequest:
        return cls.model_validate_json(payload)

    @property
    def pseudonym(self) -> str:
        """A stable stand-in for the person on rows kept for counts or idempotency: derived from the request, so
        nothing leads back to the person."""
        return f"erased:{uuid.uuid5(_PSEUDONYM_NAMESPACE, self.request_id)}"

    def to_json(self) -> bytes:
        return orjson.dumps({"person_key": self.person_key, "requested_at": format_timestamp(self.requested_at),
                             "request_id": self.request_id})


async def publish_erasure(publisher: Publisher, request: ErasureRequest) -> None:
    """Publish the request keyed by person key; returns once the broker acknowledged it."""
    await publisher.publish(PRIVACY_TOPIC, request.person_key.encode(), request.to_json())


def privacy_group(service_name: str) -> str:
    """The consumer group in which ``service_name`` applies erasure requests."""
    return f"{service_name}-privacy"


def erasure_subscription(service_name: str, erase: BatchHandler, *, erases_from: Sequence[str]) -> Subscription:
    """The consumer of ``shoploop.privacy.v1`` a service runs to apply erasures; ``erases_from`` names the tables
    ``erase`` deletes or overwrites personal data in, scrubbed of older copies once each batch has committed."""
    return Subscription(group=privacy_group(service_name), topics=[PRIVACY_TOPIC], handle=erase,
                        decode=ErasureRequest.from_json, event_id=lambda request: request.request_id,
                        erases_from=tuple(erases_from))
