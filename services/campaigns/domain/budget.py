"""A campaign's spend against its budget (SPEC.md "Campaigns", Lifecycle: reaching the budget pauses it)."""

from __future__ import annotations

from decimal import Decimal


def spent(delivered_touches: int, per_touch_cost: Decimal | int, discount_cost: Decimal | int) -> Decimal | int:
    """Delivered touches x per-touch cost + discount cost, in money or in integer cents (SPEC.md Lifecycle, budget)."""
    return delivered_touches * per_touch_cost + discount_cost


def budget_reached(spent_so_far: Decimal | int, budget: Decimal | int | None) -> bool:
    """Whether the spend has reached the budget (none set: never); reaching it pauses the campaign (SPEC.md)."""
    return budget is not None and spent_so_far >= budget
