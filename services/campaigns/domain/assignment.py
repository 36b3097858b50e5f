"""Bucketed assignment of a campaign's entrants to the holdout or a variant (SPEC.md "Campaigns", Assignment)."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

BUCKETS = 10_000
HOLDOUT = "holdout"
MAX_VARIANTS = 20
MAX_VARIANT_NAME = 64
MAX_MESSAGE = 4_000


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of a campaign: its name, its share of buckets in basis points and its message (SPEC.md Campaigns)."""

    name: str
    split_bp: int
    message: str | None = None


def bucket(campaign_id: str, person_key: str) -> int:
    """First 8 bytes, big-endian, of SHA-256 of UTF-8 "{campaign_id}:{person_key}", modulo 10,000 (SPEC.md Assignment)."""
    digest = hashlib.sha256(f"{campaign_id}:{person_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_global_holdout(person_key: str, holdout_bp: int) -> bool:
    """Whether the deployment-wide holdout (buckets of "global:{person_key}") keeps the person out (SPEC.md Assignment)."""
    return bucket("global", person_key) < holdout_bp


def arm_of(campaign_id: str, person_key: str, holdout_bp: int, variants: Sequence[Variant]) -> str:
    """The holdout takes buckets [0, holdout_bp), then each variant its consecutive range, in order (SPEC.md Assignment)."""
    position = bucket(campaign_id, person_key)
    edge = holdout_bp
    if position < edge:
        return HOLDOUT
    for variant in variants:
        edge += variant.split_bp
        if position < edge:
            return variant.name
    raise ValueError(f"splits cover {edge} of {BUCKETS} buckets; validate_splits first")


def arms(holdout_bp: int, variants: Sequence[Variant]) -> list[tuple[str, int]]:
    """Every arm with its split in report order: the holdout first when the campaign has one, then the variants."""
    listed = [(HOLDOUT, holdout_bp)] if holdout_bp > 0 else []
    return listed + [(variant.name, variant.split_bp) for variant in variants]


def validate_splits(holdout_bp: int, variants: Sequence[Variant]) -> None:
    """Raise ValueError naming the problem unless the holdout and the variants' splits sum to 10,000 (SPEC.md Assignment)."""
    if isinstance(holdout_bp, bool) or not isinstance(holdout_bp, int) or not 0 <= holdout_bp <= BUCKETS:
        raise ValueError(f"holdout_bp must be an integer in 0..{BUCKETS}")
    if not variants:
        raise ValueError("variants must name at least one variant")
    if len(variants) > MAX_VARIANTS:
        raise ValueError(f"variants: at most {MAX_VARIANTS} variants")
    names: set[str] = set()
    for index, variant in enumerate(variants):
        where = f"variants[{index}]"
        if not isinstance(variant.name, str) or not 1 <= len(variant.name) <= MAX_VARIANT_NAME:
            raise ValueError(f"{where}.name must be 1..{MAX_VARIANT_NAME} characters")
        if any(unicodedata.category(char) == "Cc" for char in variant.name):
            raise ValueError(f"{where}.name must not contain control characters")
        if variant.name == HOLDOUT:
            raise ValueError(f"{where}.name: '{HOLDOUT}' is the holdout's name; set holdout_bp instead")
        if variant.name in names:
            raise ValueError(f"{where}.name: '{variant.name}' is listed twice")
        names.add(variant.name)
        split = variant.split_bp
        if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= BUCKETS:
            raise ValueError(f"{where}.split_bp must be an integer in 0..{BUCKETS}")
        if variant.message is not None and len(variant.message) > MAX_MESSAGE:
            raise ValueError(f"{where}.message: at most {MAX_MESSAGE} characters")
    total = holdout_bp + sum(variant.split_bp for variant in variants)
    if total != BUCKETS:
        raise ValueError(f"holdout_bp and the variants' split_bp must sum to {BUCKETS}, not {total}")
    if all(variant.split_bp == 0 for variant in variants):
        raise ValueError("variants: at least one variant needs a split_bp above 0")
