"""Random small shop histories, published shuffled with duplicates, answered by the running service exactly as
the pure domain functions (SPEC.md's transcription) answer on the same events — on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import MAX_MONEY, format_timestamp
from services.funnel.domain.funnels import DEFAULT_FUNNEL, FunnelDefinition, FunnelStep
from services.funnel.engine import funnel_windows, product_state
from services.funnel.engine.funnels import window_key
from services.funnel.settings import FunnelSettings
from tests.integration.funnel import expected
from tests.integration.funnel.helpers import (
    CAMPAIGNS,
    cart,
    facts,
    inquiry,
    order,
    publish,
    refund,
    review,
    view,
    wait_consumed,
)

TIME_ZONE = "Asia/Shanghai"
ZONE = ZoneInfo(TIME_ZONE)
# Each example lives in its own era, far enough from the others that no rule reaches across (30-day
# channel lookback, 56-day lifecycle), with its own persons, products and orders.
FIRST_ERA = datetime(2024, 1, 1, tzinfo=UTC)
ERA = timedelta(days=200)
PERSONS = ("ann", "bob", "cid", "dan")
PRODUCTS = ("p1", "p2", "p3", "p4")
# A product's attributes change over time (the latest carried one counts), and are often left out.
CATEGORIES = (None, "dresses", "shoes")
# The largest price three units of which fit one order line's bound (SPEC.md "Events": 1,000,000,000,000.00):
# sums of them must stay exact.
PRICES = ("9.99", "59.9", "120", "399", "333333333333.33")
TIERS = (None, None, "profit", "形象款")
SOURCES = (None, "google", "douyin")
ORDERS = tuple(f"o{number}" for number in range(1, 9))

# Most events fall in two busy weeks; some spread over ten weeks, so lifecycle stages and lookbacks vary.
hours = st.one_of(st.integers(0, 14 * 24), st.integers(0, 70 * 24))
persons = st.sampled_from(PERSONS)
products = st.sampled_from(PRODUCTS)
sources = st.sampled_from(SOURCES)
categories = st.sampled_from(CATEGORIES)
lines = st.lists(st.tuples(products, st.integers(1, 3), st.sampled_from(PRICES), categories), min_size=1, max_size=2,
                 unique_by=lambda line: line[0])

# One event as (kind, person, hour, details); built into an Event once the era is known. Orders and refunds
# come often and reuse few order ids, so that duplicates, early refunds and orders before the range are common.
orders = st.tuples(st.just("order"), persons, hours, st.tuples(st.sampled_from(ORDERS), lines, sources, st.booleans()))
refunds = st.tuples(st.just("refund"), persons, hours,
                    st.tuples(st.sampled_from((*ORDERS, "ghost")), st.sampled_from((None, "5", "20.01"))))
steps = st.one_of(
    orders,
    refunds,
    st.tuples(st.just("view"), persons, hours,
              st.tuples(products, sources, categories, st.sampled_from((None, *PRICES)), st.sampled_from(TIERS))),
    st.tuples(st.just("cart"), persons, hours, st.tuples(products, sources)),
    st.tuples(st.just("inquiry"), persons, hours,
              st.tuples(st.one_of(st.none(), products), st.one_of(st.none(), st.sampled_from((5, 30, 61.5))))),
    st.tuples(st.just("review"), persons, hours, st.tuples(products, st.integers(1, 5))),
    orders,
)
histories = st.fixed_dictionaries({
    "events": st.lists(steps, min_size=30, max_size=80),
    "duplicates": st.lists(st.integers(0, 79), max_size=6),
    "shuffle_seed": st.integers(0, 2**32 - 1),
    "span_days": st.tuples(st.integers(0, 12), st.integers(1, 10)),
    "as_of_hours": st.one_of(st.integers(24, 16 * 24), st.integers(0, 72 * 24)),
})

CUSTOM_FUNNELS = {
    "product path": FunnelDefinition(
        "product path", (FunnelStep("view", category="dresses"), FunnelStep("add_to_cart"), FunnelStep("order")),
        window_seconds=24 * 3600, unit="product"),
    "inquiry path": FunnelDefinition(
        "inquiry path", (FunnelStep("view"), FunnelStep("inquiry"), FunnelStep("order", source="google")),
        window_seconds=36 * 3600),
}


def build(raw: dict, era: int) -> list:
    """The example's events in its era, with its own names."""
    base = FIRST_ERA + era * ERA
    tag = f"x{era}-"
    built = []
    for kind, person, hour, details in raw["events"]:
        who, at = tag + person, base + timedelta(hours=hour)
        if kind == "view":
            product, source, category, price, tier = details
            built.append(view(who, at, tag + product, source=source, category=category, price=price, tier=tier))
        elif kind == "cart":
            product, source = details
            built.append(cart(who, at, tag + product, source=source))
        elif kind == "inquiry":
            product, response = details
            built.append(inquiry(who, at, product and tag + product, response_seconds=response))
        elif kind == "review":
            product, rating = details
            built.append(review(who, at, rating, tag + product))
        elif kind == "order":
            order_id, items, source, discounted = details
            total = sum(Decimal(price) * quantity for _, quantity, price, _ in items) - (1 if discounted else 0)
            categories = {tag + p: category for p, _, _, category in items if category is not None}
            built.append(order(who, at, tag + order_id, [(tag + p, q, price) for p, q, price, _ in items],
                               total=str(min(max(total, Decimal(0)), MAX_MONEY)), categories=categories,
                               source=source))
        else:
            order_id, amount = details
            built.append(refund(who, at, tag + order_id, amount))
    return built


_eras = itertools.count(1)


@pytest.fixture(name="settings")
def shanghai_settings(funnel_common, database_url, tmp_path) -> FunnelSettings:
    return FunnelSettings(database_url=database_url, common=funnel_common.model_copy(update={"timezone": TIME_ZONE}),
                          fact_copy_dir=str(tmp_path / "copy"))


@pytest.fixture(autouse=True)
def fold_often(monkeypatch):
    """The copy folds its state (product and KPI) every 97 rows instead of 100,000: the examples' answers then
    come from the state and the rows beside it at many different points."""
    monkeypatch.setattr(product_state, "FOLD_ROWS", 97)


@pytest.fixture
async def shop(funnel, publisher):
    """The running service with the custom funnels defined, and a count of the records published to it."""
    funnel.custom = {}
    for name, definition in CUSTOM_FUNNELS.items():
        body = {
            "name": name, "window_seconds": definition.window_seconds, "unit": definition.unit,
            "steps": [{"type": step.type, "where": {f: getattr(step, f) for f in ("product_id", "category", "source")
                                                   if getattr(step, f) is not None}} for step in definition.steps],
        }
        response = await funnel.client.post("/v1/funnels", json=body, headers=CAMPAIGNS)
        funnel.custom[name] = response.json()["funnel_id"]
    funnel.published = 0
    return funnel


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=histories)
async def test_answers_equal_the_domain_on_random_histories_sent_shuffled(shop, publisher, raw):
    funnel = shop
    era = next(_eras)
    events = build(raw, era)
    sent = events + [events[index] for index in raw["duplicates"] if index < len(events)]
    random.Random(raw["shuffle_seed"]).shuffle(sent)
    funnel.published += await publish(publisher, sent)
    await wait_consumed(funnel.app, funnel.published)

    known = facts(events)
    base = (FIRST_ERA + era * ERA).date()
    first_day, days = raw["span_days"]
    start_day, end_day = base + timedelta(days=first_day), base + timedelta(days=first_day + days)
    start, end = (datetime.combine(day, datetime.min.time(), ZONE).astimezone(UTC) for day in (start_day, end_day))
    as_of = FIRST_ERA + era * ERA + timedelta(hours=raw["as_of_hours"])
    span = {"from": start_day.isoformat(), "to": end_day.isoformat(), "as_of": format_timestamp(as_of)}

    kpis = await funnel.get("/v1/kpis", **span, granularity="day")
    want = expected.kpis(known, start, end, as_of, TIME_ZONE)
    assert expected.subset(kpis, want) == want

    default = await funnel.get("/v1/funnels/default/result", **span, breakdown="source")
    want = expected.funnel(known, DEFAULT_FUNNEL, start, end, as_of, "source")
    assert expected.subset(default, want) == want
    for name, definition in CUSTOM_FUNNELS.items():
        result = await funnel.get(f"/v1/funnels/{funnel.custom[name]}/result", **span, breakdown="category")
        want = expected.funnel(known, definition, start, end, as_of, "category")
        assert expected.subset(result, want) == want, name
    # Without a breakdown, the person funnels are answered from their per-day state (funnel_windows.py; the default's
    # is built after its first answer), and from the rows beside it.
    for name, definition in {"default": DEFAULT_FUNNEL, **CUSTOM_FUNNELS}.items():
        result = await funnel.get(f"/v1/funnels/{funnel.custom.get(name, name)}/result", **span)
        want = expected.funnel(known, definition, start, end, as_of, None)
        assert expected.subset(result, want) == want, name
    held = funnel_windows.registered(funnel.app.state.service.mirror.duckdb.cursor())
    assert window_key(CUSTOM_FUNNELS["inquiry path"]) in held  # built when it was defined

    assert (await funnel.get("/v1/products", **span))["items"] == expected.products(known, start, end, as_of)
    # The matrix looks 56 days back: once more from late in the era, where history reaches beyond that.
    for moment in (as_of, as_of + timedelta(weeks=8)):
        matrix = await funnel.get("/v1/products/matrix", as_of=format_timestamp(moment))
        assert matrix["items"] == expected.matrix(known, moment)
    assert (await funnel.get("/v1/channels", **span))["items"] == expected.channels(known, start, end, as_of)
