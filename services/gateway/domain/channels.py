"""Channel metrics joined with spend (SPEC.md "Channel of an order" and "Spend"): the funnel's figures per
source beside the campaigns service's spend for the same range, with roas and cac by the funnel's rule."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from services.funnel.domain.channels import cac, roas

# What the funnel answers for a source nobody reached from in the range (a source with spend only).
_NO_TRAFFIC = {"uv": 0, "buyers": 0, "orders": 0, "gmv": 0.0, "conversion_rate": None, "uv_value": None,
               "new_customers": 0}


def spend_by_source(entries: Iterable[Mapping[str, Any]]) -> dict[str, Decimal]:
    """Sum of the spend entries ``{source, day, amount}`` per source, exactly (amounts are cents)."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for entry in entries:
        totals[entry["source"]] += Decimal(str(entry["amount"]))
    return dict(totals)


def priced_channel(channel: Mapping[str, Any], spend: Decimal | None) -> dict[str, Any]:
    """One source's metrics with ``spend``, ``roas`` and ``cac`` (all None when no spend was posted)."""
    gmv = Decimal(str(channel["gmv"]))
    return {
        **channel,
        "spend": spend,
        "roas": None if spend is None else roas(gmv, spend),
        "cac": None if spend is None else cac(spend, channel["new_customers"]),
    }


def priced_channels(channels: Iterable[Mapping[str, Any]], spend: Mapping[str, Decimal]) -> list[dict[str, Any]]:
    """Every source with traffic, orders or spend in the range, by name."""
    by_source = {channel["source"]: channel for channel in channels}
    for source in spend.keys() - by_source.keys():
        by_source[source] = {"source": source, **_NO_TRAFFIC}
    return [priced_channel(by_source[source], spend.get(source)) for source in sorted(by_source)]
