"""The brute-force side of the comparisons: the pure domain functions (SPEC.md's transcription) run directly
on the published events, rendered the way the API renders numbers."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.funnel.domain.channels import channel_metrics
from services.funnel.domain.funnels import FunnelDefinition, funnel_result
from services.funnel.domain.kpis import daily_kpis, range_kpis
from services.funnel.domain.products import product_matrix, product_metrics
from tests.integration.funnel.helpers import money

MONEY = {"gmv", "refunds", "net_gmv", "aov", "revenue_per_buyer", "uv_value", "converted_value", "price"}


def rendered(figures: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(figures):
        if field.name in leave_out:
            continue
        value = getattr(figures, field.name)
        if field.name in MONEY or isinstance(value, Decimal):
            value = money(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def kpis(facts, start: datetime, end: datetime, as_of: datetime, time_zone: str | None = None) -> dict[str, Any]:
    expected = rendered(range_kpis(facts, start, end, as_of))
    if time_zone is not None:
        expected["days"] = [
            {"date": day.isoformat(), **rendered(figures)}
            for day, figures in daily_kpis(facts, start, end, as_of, time_zone).items()
        ]
    return expected


def funnel(facts, definition: FunnelDefinition, start, end, as_of, breakdown=None) -> dict[str, Any]:
    result = funnel_result(definition, facts, start, end, as_of, breakdown)
    expected = rendered(result, leave_out=("breakdown",))
    expected["breakdown"] = None if result.breakdown is None else {
        value: rendered(part, leave_out=("breakdown",)) for value, part in result.breakdown.items()
    }
    return expected


def products(facts, start, end, as_of) -> list[dict[str, Any]]:
    return [rendered(metrics) for metrics in product_metrics(facts, start, end, as_of)]


def matrix(facts, as_of) -> list[dict[str, Any]]:
    return [
        {**rendered(entry), "tier_mismatch": entry.declared_tier not in (None, entry.suggested_tier)}
        for entry in product_matrix(facts, as_of)
    ]


def channels(facts, start, end, as_of) -> list[dict[str, Any]]:
    return [rendered(metrics, leave_out=("spend", "roas", "cac"))
            for metrics in channel_metrics(facts, start, end, as_of)]


def subset(answer: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The answer's fields that the expectation names (answers also echo from, to, as_of...)."""
    return {name: answer.get(name) for name in expected}
