"""Ratios and medians with the SPEC.md conventions ("Definitions": zero denominators, even medians)."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any


def ratio(numerator: Any, denominator: Any) -> Any:
    """numerator / denominator, or None when the denominator is zero (SPEC.md "Definitions")."""
    return numerator / denominator if denominator else None


def median(values: Iterable[Any]) -> Any:
    """Median, the mean of the two middle values for an even count; None when empty (SPEC.md "Definitions")."""
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def share_below(value: Any, compared: list[Any]) -> Fraction:
    """Fraction of the compared values, `value`'s own included, strictly smaller (SPEC.md "Product matrix")."""
    return Fraction(sum(other < value for other in compared), len(compared))


def share_above(value: Any, compared: list[Any]) -> Fraction:
    """Fraction of the compared values, `value`'s own included, strictly greater (SPEC.md "Product matrix")."""
    return Fraction(sum(other > value for other in compared), len(compared))


def total(amounts: Iterable[Decimal]) -> Decimal:
    """Sum of money amounts; Decimal zero when there are none."""
    return sum(amounts, Decimal(0))
