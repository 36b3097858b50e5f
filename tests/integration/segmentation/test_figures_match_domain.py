"""Served figures equal the domain functions applied directly to the same events, sent shuffled, on
SQLite and PostgreSQL (SPEC.md "Definitions: Customers"; issue 4's property test).

The service is started once per database; each example adds new persons, and the expectation is
computed over every event sent so far, so population-wide answers (RFM, lifecycle, tiers, members)
are checked on a growing population.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import Event, format_timestamp
from services.segmentation.domain.customers import (
    LifecycleStage,
    LifecycleThresholds,
    MembershipTier,
    OrderRecord,
    OrderStatus,
    TierThresholds,
    counted_orders,
    customer_figures,
)
from services.segmentation.domain.rfm import SCORES, RfmSegment, score_population
from services.segmentation.domain.rules import matches, parse_rule, rule_figures
from services.segmentation.segments import builtin_segment_ids
from tests.integration.segmentation.conftest import CAMPAIGNS, event

BASE = datetime(2025, 1, 1, tzinfo=UTC)
# The largest amounts (SPEC.md "Events": at most 1,000,000,000,000.00) too: their sums must stay exact.
TOTALS = ["0.00", "9.90", "99.00", "1999.99", "2000.00", "5000.50", "10000.00", "999999999999.99", "1000000000000.00"]
RULE = {"any": [
    {"all": [{"field": "lifecycle", "op": "in", "value": ["new", "active"]},
             {"count": {"type": "view", "days": 30}, "op": "gte", "value": 1}]},
    {"field": "traits.vip", "op": "eq", "value": True},
    {"count": {"type": "order", "days": 90}, "op": "gte", "value": 2},
    {"all": [{"field": "acquisition_source", "op": "eq", "value": "douyin"}, {"field": "r_score", "op": "gte", "value": 3}]},
]}
_examples = itertools.count()

def _moments(first_day: int, last_day: int) -> st.SearchStrategy[datetime]:
    # Whole days and round hours, so that the 30/90/180-day and 365-day boundaries are hit exactly.
    return st.builds(lambda days, hours: BASE + timedelta(days=days, hours=hours),
                     st.integers(first_day, last_day), st.sampled_from([0, 0, 0, 6, 23]))


moments = _moments(0, 420)
behaviour = st.fixed_dictionaries({
    "kind": st.sampled_from(["view", "view", "inquiry", "review", "identify", "completed", "completed",
                             "completed", "refunded"]),
    "at": moments,
    "order": st.integers(0, 4),
    "total": st.sampled_from(TOTALS),
    "source": st.sampled_from([None, "douyin", "xiaohongshu"]),
    "vip": st.booleans(),
})
histories = st.lists(st.lists(behaviour, min_size=1, max_size=6), min_size=1, max_size=4)


def build_events(example: int, history: list[list[dict[str, Any]]]) -> list[Event]:
    events = []
    for person_index, items in enumerate(history):
        person = f"x{example}-p{person_index}"
        for item_index, item in enumerate(items):
            event_id = f"x{example}-e{person_index}-{item_index}"
            # A small pool of order ids per example: duplicates of one order across events and persons.
            order_id = f"x{example}-o{item['order']}"
            parts: dict[str, Any] = {"channel": {"source": item["source"]}} if item["source"] else {}
            kind = item["kind"]
            if kind == "completed":
                parts["order"] = {"order_id": order_id, "status": "completed", "total": item["total"],
                                  "items": [{"product_id": "sku-1", "quantity": 1, "unit_price": item["total"]}]}
                kind = "order"
            elif kind == "refunded":
                parts["order"] = {"order_id": order_id, "status": "refunded"}
                kind = "order"
            elif kind == "inquiry":
                parts["inquiry"] = {"inquiry_id": event_id}
            elif kind == "review":
                parts["review"] = {"rating": 4}
            elif kind == "identify":
                parts["traits"] = {"vip": item["vip"], "city": "杭州"}
            events.append(event(kind, person, item["at"], event_id, **parts))
    return events


def money(amount: Decimal) -> float:
    return float(amount.quantize(Decimal("0.01")))


def moment(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


class Expected:
    """The figures at as_of, straight from the domain functions over the events (no storage, no SQL)."""

    def __init__(self, events: list[Event], as_of: datetime, rule_id: str) -> None:
        self.as_of = as_of
        self.rule_id = rule_id
        self.rule = parse_rule(RULE)
        visible = [e for e in events if e.occurred_at <= as_of]
        self.by_person: dict[str, list[Event]] = defaultdict(list)
        for e in visible:
            self.by_person[e.person_key].append(e)
        records = [OrderRecord(e.event_id, e.person_key, e.order.order_id, OrderStatus(e.order.status), e.occurred_at,
                               e.order.total or Decimal(0)) for e in visible if e.order is not None]
        orders = defaultdict(list)
        for fact in counted_orders(records):
            orders[fact.person_key].append(fact)
        self.orders = orders
        self.figures = {p: customer_figures(orders[p], as_of, LifecycleThresholds(), TierThresholds())
                        for p in self.by_person}
        self.rfm = score_population({p: f.rfm_figures for p, f in self.figures.items() if f.rfm_figures})
        first_events = {}
        for e in events:  # acquisition: the person's first event ever (it is at or before as_of if known)
            key = (e.occurred_at, e.event_id)
            if e.person_key not in first_events or key < first_events[e.person_key][0]:
                first_events[e.person_key] = (key, e.channel.source)
        self.acquisition = {p: source for p, (_, source) in first_events.items()}

    def traits(self, person: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for e in sorted(self.by_person[person], key=lambda e: (e.occurred_at, e.event_id)):
            if e.traits is not None:
                merged.update(e.traits)
        return merged

    def in_rule_segment(self, person: str) -> bool:
        as_of = self.as_of
        person_events = self.by_person[person]

        def window(days: int) -> tuple[datetime, datetime]:
            return as_of - timedelta(days=days), as_of

        start, end = window(30)
        views = sum(1 for e in person_events if e.type == "view" and start < e.occurred_at <= end)
        start, end = window(90)
        orders = sum(1 for o in self.orders[person] if start < o.occurred_at <= end)
        counts = {parse_rule(RULE).rules[0].rules[1].count: views, parse_rule(RULE).rules[2].count: orders}
        times = [e.occurred_at for e in person_events]
        figures = rule_figures(self.figures[person], self.rfm.scores.get(person), first_seen_at=min(times),
                               last_seen_at=max(times), acquisition_source=self.acquisition[person],
                               traits=self.traits(person))
        return matches(self.rule, figures, counts)

    def profile(self, person: str) -> dict[str, Any]:
        f = self.figures[person]
        score = self.rfm.scores.get(person)
        times = [e.occurred_at for e in self.by_person[person]]
        segments = builtin_segment_ids(f, score) + ([self.rule_id] if self.in_rule_segment(person) else [])
        return {
            "person_key": person, "as_of": format_timestamp(self.as_of),
            "first_seen_at": format_timestamp(min(times)), "last_seen_at": format_timestamp(max(times)),
            "acquisition_source": self.acquisition[person],
            "orders": f.orders, "gmv": money(f.gmv),
            "first_order_at": moment(f.first_order_at), "last_order_at": moment(f.last_order_at),
            "rfm": {"recency_days": f.recency_days, "frequency": f.frequency, "monetary": money(f.monetary),
                    "r_score": score and score.r_score, "f_score": score and score.f_score,
                    "m_score": score and score.m_score, "segment": score and score.segment.value},
            "lifecycle": f.lifecycle.value, "tier": f.tier and f.tier.value,
            "repeat_orders_90d": f.repeat_orders_90d, "loyalty_milestone": f.loyalty_milestone,
            "inquiries": sum(1 for e in self.by_person[person] if e.type == "inquiry"),
            "reviews": sum(1 for e in self.by_person[person] if e.type == "review"),
            "traits": self.traits(person), "segments": segments,
        }

    def rfm_summary(self) -> dict[str, Any]:
        return {"as_of": format_timestamp(self.as_of), "customers": len(self.rfm.scores),
                "segments": {s.value: self.rfm.segment_counts[s] for s in RfmSegment},
                "cells": [{"r_score": r, "f_score": f, "customers": self.rfm.cell_counts[r, f]}
                          for r in SCORES for f in SCORES]}

    def lifecycle_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in LifecycleStage), 0)
        for f in self.figures.values():
            counts[f.lifecycle.value] += 1
        return counts

    def tier_counts(self) -> tuple[dict[str, int], int]:
        counts = dict.fromkeys((t.value for t in MembershipTier), 0)
        for f in self.figures.values():
            if f.tier is not None:
                counts[f.tier.value] += 1
        return counts, sum(1 for f in self.figures.values() if f.tier is None)


async def members(segmentation, segment_id: str, as_of: str) -> list[str]:
    found, cursor = [], None
    while True:
        params = {"as_of": as_of, "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = await segmentation.get(f"/v1/segments/{segment_id}/members", **params)
        found += [item["person_key"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(history=histories, as_of=_moments(150, 430), shuffle_seed=st.integers(0, 2**16), resend=st.booleans())
async def test_profiles_rfm_lifecycle_tiers_and_members_equal_the_domain_functions(
    segmentation, history, as_of, shuffle_seed, resend,
):
    state = segmentation.__dict__.setdefault("property_state", {"events": {}, "rule_id": None})
    if state["rule_id"] is None:
        created = await segmentation.client.post("/v1/segments", json={"name": "property", "rule": RULE},
                                                 headers=CAMPAIGNS)
        assert created.status_code == 201, created.text
        state["rule_id"] = created.json()["segment_id"]
    new_events = build_events(next(_examples), history)
    sent = new_events + (new_events[:2] if resend else [])  # redelivered copies count once
    random.Random(shuffle_seed).shuffle(sent)
    await segmentation.send(sent)
    state["events"].update({e.event_id: e for e in new_events})
    await segmentation.wait_processed(len(state["events"]))

    expected = Expected(list(state["events"].values()), as_of, state["rule_id"])
    at = format_timestamp(as_of)
    for person in sorted({e.person_key for e in new_events}):
        response = await segmentation.client.get(f"/v1/customers/{person}", params={"as_of": at},
                                                 headers={"Authorization": "Bearer dev-read-key"})
        if person not in expected.by_person:
            assert response.status_code == 404, response.text
            continue
        assert response.status_code == 200, response.text
        profile = response.json()
        profile["segments"] = [segment["segment_id"] for segment in profile["segments"]]
        assert profile == expected.profile(person)

    assert await segmentation.get("/v1/rfm", as_of=at) == expected.rfm_summary()
    lifecycle = await segmentation.get("/v1/lifecycle", as_of=at)
    assert (lifecycle["customers"], lifecycle["stages"]) == (len(expected.figures), expected.lifecycle_counts())
    tiers = await segmentation.get("/v1/tiers", as_of=at)
    assert (tiers["tiers"], tiers["no_tier"]) == expected.tier_counts()
    assert await members(segmentation, state["rule_id"], at) == sorted(
        p for p in expected.by_person if expected.in_rule_segment(p)
    )
