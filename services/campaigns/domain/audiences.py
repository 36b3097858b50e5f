"""Who enters a campaign and when: the four audience kinds (SPEC.md "Campaigns", Audience)."""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

MAX_HOURS = 24 * 90
MAX_SEGMENT_ID = 256


class AudienceKind(StrEnum):
    SEGMENT_ENTERED = "segment_entered"
    SEGMENT_SCHEDULED = "segment_scheduled"
    CART_ABANDONED = "cart_abandoned"
    INQUIRY_UNANSWERED = "inquiry_unanswered"


SEGMENT_KINDS = frozenset({AudienceKind.SEGMENT_ENTERED, AudienceKind.SEGMENT_SCHEDULED})
DEADLINE_KINDS = frozenset({AudienceKind.CART_ABANDONED, AudienceKind.INQUIRY_UNANSWERED})
# The event type whose occurred_at starts a deadline audience's clock.
TRIGGER_TYPE = {AudienceKind.CART_ABANDONED: "add_to_cart", AudienceKind.INQUIRY_UNANSWERED: "inquiry"}


@dataclass(frozen=True, slots=True)
class Audience:
    """segment_entered / segment_scheduled name segment_id (and send_at); cart_abandoned / inquiry_unanswered hours."""

    kind: AudienceKind
    segment_id: str | None = None
    send_at: datetime | None = None
    hours: int | None = None


def validate_audience(audience: Audience) -> None:
    """Raise ValueError naming the field that the audience's kind requires or forbids (SPEC.md Audience)."""
    kind = AudienceKind(audience.kind)
    if kind in SEGMENT_KINDS:
        if not audience.segment_id or len(audience.segment_id) > MAX_SEGMENT_ID:
            raise ValueError(f"audience.segment_id: {kind} needs a segment id of 1..{MAX_SEGMENT_ID} characters")
        if audience.hours is not None:
            raise ValueError(f"audience.hours: {kind} takes no hours")
    if kind is AudienceKind.SEGMENT_SCHEDULED:
        if audience.send_at is None:
            raise ValueError("audience.send_at: segment_scheduled needs the time to send")
        if audience.send_at.tzinfo is None:
            raise ValueError("audience.send_at needs a UTC offset")
    elif audience.send_at is not None:
        raise ValueError(f"audience.send_at: only segment_scheduled takes send_at, not {kind}")
    if kind in DEADLINE_KINDS:
        if audience.segment_id is not None:
            raise ValueError(f"audience.segment_id: {kind} takes no segment")
        hours = audience.hours
        if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_HOURS:
            raise ValueError(f"audience.hours: {kind} needs an integer number of hours in 1..{MAX_HOURS}")


def deadline(trigger_at: datetime, hours: int) -> datetime:
    """When an add_to_cart's / inquiry's H hours run out: its occurred_at + H (SPEC.md Audience)."""
    return trigger_at + timedelta(hours=hours)


def abandoned(trigger_at: datetime, hours: int, completed_order_times: Iterable[datetime]) -> bool:
    """No completed order by the same person in [t, t + H]: an order at exactly t + H still rescues (SPEC.md Audience)."""
    end = deadline(trigger_at, hours)
    return not any(trigger_at <= placed <= end for placed in completed_order_times)


def entry_time(
    audience: Audience, *, entered_at: datetime | None = None, trigger_at: datetime | None = None
) -> datetime:
    """assigned_at: the segment entry's time, send_at, or the trigger's occurred_at + H (SPEC.md Audience)."""
    kind = AudienceKind(audience.kind)
    if kind is AudienceKind.SEGMENT_ENTERED:
        if entered_at is None:
            raise ValueError("segment_entered needs the segment entry's time")
        return entered_at
    if kind is AudienceKind.SEGMENT_SCHEDULED:
        if audience.send_at is None:
            raise ValueError("segment_scheduled needs send_at")
        return audience.send_at
    if trigger_at is None or audience.hours is None:
        raise ValueError(f"{kind} needs the trigger's time and hours")
    return deadline(trigger_at, audience.hours)


def entered_after_activation(entered_at: datetime, activated_at: datetime) -> bool:
    """segment_entered takes persons entering the segment at or after the activation instant (SPEC.md Audience)."""
    return entered_at >= activated_at


def new_entrants(candidates: Iterable[str], already_entered: Container[str]) -> list[str]:
    """A person enters a campaign at most once: the candidates not yet entered, each once, in order (SPEC.md)."""
    seen: set[str] = set()
    fresh = []
    for person_key in candidates:
        if person_key in seen or person_key in already_entered:
            continue
        seen.add(person_key)
        fresh.append(person_key)
    return fresh
