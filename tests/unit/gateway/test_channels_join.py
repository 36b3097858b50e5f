"""The gateway's join of the funnel's channel answer with spend equals the funnel domain's own rule
(SPEC.md "Spend": roas = gmv / spend, cac = spend / new_customers) computed from the raw events."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.funnel.domain.channels import channel_metrics
from services.funnel.schemas import channel_public
from services.gateway.domain.channels import priced_channels, spend_by_source
from tests.unit.funnel.builders import at, order, view

SOURCES = ["(direct)", "search", "paid_social", "content"]
START, END, AS_OF = at(days=0), at(days=10), at(days=40)


@st.composite
def shop_events(draw):
    events = []
    for index in range(draw(st.integers(0, 25))):
        person = draw(st.sampled_from(["ann", "bob", "cid", "dan"]))
        when = at(days=draw(st.integers(-35, 14)), hours=draw(st.integers(0, 23)))
        source = draw(st.sampled_from(SOURCES))
        if draw(st.booleans()):
            events.append(view(person, when, source=source))
        else:
            cents = draw(st.integers(1, 100_000))
            events.append(order(person, when, f"o{index}", f"{cents // 100}.{cents % 100:02d}", source=source))
    return events


spend_amounts = st.dictionaries(
    st.sampled_from([*SOURCES, "wechat_group"]),
    st.integers(0, 10_000_000).map(lambda cents: Decimal(cents) / 100),
)


@settings(max_examples=200, deadline=None)
@given(shop_events(), spend_amounts)
def test_joined_channels_equal_the_funnel_rule_over_the_raw_events(events, spend):
    answered = [channel_public(metrics) for metrics in channel_metrics(events, START, END, AS_OF)]

    joined = priced_channels(answered, spend)

    expected = channel_metrics(events, START, END, AS_OF, spend=spend)
    assert [row["source"] for row in joined] == [metrics.source for metrics in expected]
    for row, metrics in zip(joined, expected, strict=True):
        assert (row["spend"], row["roas"], row["cac"]) == (metrics.spend, metrics.roas, metrics.cac)
        assert (row["uv"], row["buyers"], row["orders"], row["new_customers"]) == (
            metrics.uv, metrics.buyers, metrics.orders, metrics.new_customers)
        assert Decimal(str(row["gmv"])) == metrics.gmv


def test_a_source_with_spend_and_no_visits_is_listed_with_its_cost_and_no_return():
    joined = priced_channels([], {"paid_social": Decimal("250.00")})

    assert joined == [{"source": "paid_social", "uv": 0, "buyers": 0, "orders": 0, "gmv": 0.0,
                       "conversion_rate": None, "uv_value": None, "new_customers": 0,
                       "spend": Decimal("250.00"), "roas": Decimal(0), "cac": None}]


def test_spend_entries_of_several_days_add_up_exactly_per_source():
    entries = [{"source": "search", "day": f"2026-05-0{day}", "amount": 0.1} for day in range(1, 4)]
    entries.append({"source": "content", "day": "2026-05-01", "amount": 12.34})

    assert spend_by_source(entries) == {"search": Decimal("0.3"), "content": Decimal("12.34")}
