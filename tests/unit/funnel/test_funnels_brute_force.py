"""The funnel against an enumeration of every chain, straight from SPEC.md "Funnel", on small random shops."""

import random
import statistics
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.funnel.domain.facts import DIRECT, FunnelEvent, OrderFacts, OrderItem
from services.funnel.domain.funnels import FunnelDefinition, FunnelResult, FunnelStep, funnel_result

from .builders import at

CATEGORY = {"p1": "shoes", "p2": "shoes", "p3": "hats"}
PERSONS = ("ann", "bob")
SOURCES = (DIRECT, "ads")


@st.composite
def shops(draw):
    events = []
    for index in range(draw(st.integers(0, 10))):
        event_id = f"e{draw(st.integers(0, 99)):02d}-{index}"
        person = draw(st.sampled_from(PERSONS))
        # Few distinct minutes, so that simultaneous events are common.
        when = at(minutes=draw(st.integers(0, 6)))
        source = draw(st.sampled_from(SOURCES))
        kind = draw(st.sampled_from(["view", "add_to_cart", "order"]))
        if kind == "order":
            products = draw(st.lists(st.sampled_from(sorted(CATEGORY)), min_size=1, max_size=2, unique=True))
            items = tuple(
                OrderItem(p, CATEGORY[p], draw(st.integers(1, 2)), Decimal(draw(st.integers(1, 9))))
                for p in products
            )
            facts = OrderFacts(
                f"{person}-o{draw(st.integers(1, 3))}",
                draw(st.sampled_from(["completed", "completed", "refunded"])),
                items,
                sum((i.amount for i in items), Decimal(0)),
            )
            events.append(FunnelEvent(event_id, "order", person, when, source, order=facts))
        else:
            product = draw(st.sampled_from(sorted(CATEGORY)))
            events.append(
                FunnelEvent(
                    event_id, kind, person, when, source, product_id=product, category=CATEGORY[product]
                )
            )
    return events


steps = st.builds(
    FunnelStep,
    type=st.sampled_from(["view", "add_to_cart", "order"]),
    product_id=st.sampled_from([None, None, None, "p1"]),
    category=st.sampled_from([None, None, None, "shoes"]),
    source=st.sampled_from([None, None, None, "ads"]),
)
shop_funnels = st.sampled_from(
    [
        (FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("order")),
        (FunnelStep("view"), FunnelStep("view"), FunnelStep("order")),
        (FunnelStep("view"), FunnelStep("add_to_cart"), FunnelStep("add_to_cart", category="shoes")),
        (FunnelStep("add_to_cart"), FunnelStep("order", product_id="p1"), FunnelStep("order")),
    ]
)
definitions = st.builds(
    FunnelDefinition,
    name=st.just("random"),
    steps=st.one_of(shop_funnels, st.lists(steps, min_size=1, max_size=4).map(tuple)),
    window_seconds=st.integers(0, 4).map(lambda minutes: minutes * 60),
    unit=st.sampled_from(["person", "product"]),
)
ranges = st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 8)).map(
    lambda t: (at(minutes=t[0]), at(minutes=t[0] + t[1]), at(minutes=t[2]))
)


def brute_force(definition, events, start, end, as_of, breakdown=None) -> FunnelResult:
    known = [e for e in events if e.occurred_at <= as_of]
    counting = {}
    for e in sorted(known, key=lambda e: (e.occurred_at, e.event_id)):
        if e.order and e.order.status == "completed":
            counting.setdefault(e.order.order_id, e)
    counting_ids = {e.event_id for e in counting.values()}
    window = timedelta(seconds=definition.window_seconds)
    k = len(definition.steps)

    def about(event):
        return [i.product_id for i in event.order.items] if event.order else [event.product_id]

    def matches(step, event, product):
        products = [product] if product else about(event)
        return (
            event.type == step.type
            and (event.type != "order" or event.event_id in counting_ids)
            and (step.source is None or event.source == step.source)
            and (step.product_id is None or step.product_id in products)
            and (step.category is None or any(CATEGORY[p] == step.category for p in products))
        )

    units = {(e.person_key, p if definition.unit == "product" else None) for e in known for p in about(e)}
    journeys = []
    for person, product in units:
        mine = [e for e in known if e.person_key == person and (product is None or product in about(e))]

        def extend(chain, mine=mine, product=product):
            """Every chain that starts as `chain` does."""
            yield chain
            if len(chain) < k:
                for e in mine:
                    if (
                        e not in chain
                        and matches(definition.steps[len(chain)], e, product)
                        and chain[-1].occurred_at <= e.occurred_at <= chain[0].occurred_at + window
                    ):
                        yield from extend([*chain, e])

        firsts = [
            e for e in mine if start <= e.occurred_at < end and matches(definition.steps[0], e, product)
        ]
        if not firsts:
            continue
        chains = [chain for e1 in firsts for chain in extend([e1])]
        level = max(len(chain) for chain in chains)
        complete = [chain for chain in chains if len(chain) == k]
        entry = min(firsts, key=lambda e: (e.occurred_at, e.event_id))
        journeys.append(
            {
                "level": level,
                "in_progress": level < k
                and any(len(c) == level and c[0].occurred_at + window > as_of for c in chains),
                "seconds": min(
                    ((c[-1].occurred_at - c[0].occurred_at).total_seconds() for c in complete), default=None
                ),
                "completing": min(
                    (c[-1] for c in complete), key=lambda e: (e.occurred_at, e.event_id), default=None
                ),
                "product": product,
                "source": entry.source,
                "category": CATEGORY[product or about(entry)[0]],
            }
        )

    def summary(journeys):
        counts = tuple(sum(j["level"] >= level for j in journeys) for level in range(1, k + 1))
        converted = [j for j in journeys if j["level"] == k]
        ends_in_order = definition.steps[-1].type == "order"
        values = [
            j["completing"].order.amount
            if j["product"] is None
            else j["completing"].order.amount_of(j["product"])
            for j in (converted if ends_in_order else [])
        ]
        return FunnelResult(
            counts=counts,
            conversion=tuple(c / counts[0] if counts[0] else None for c in counts),
            step_conversion=(
                None,
                *(counts[i] / counts[i - 1] if counts[i - 1] else None for i in range(1, k)),
            ),
            in_progress=tuple(
                sum(j["level"] == level and j["in_progress"] for j in journeys) for level in range(1, k + 1)
            ),
            median_seconds_to_convert=statistics.median([j["seconds"] for j in converted])
            if converted
            else None,
            converted_value=sum(values, Decimal(0)) if ends_in_order else None,
        )

    result = summary(journeys)
    if breakdown is None:
        return result
    groups = defaultdict(list)
    for journey in journeys:
        groups[journey[breakdown]].append(journey)
    return FunnelResult(
        **{**result.__dict__, "breakdown": {key: summary(groups[key]) for key in sorted(groups)}}
    )


@settings(max_examples=500, deadline=None)
@given(
    definition=definitions,
    events=shops(),
    when=ranges,
    breakdown=st.sampled_from([None, "source", "category"]),
)
def test_the_funnel_equals_the_enumeration_of_every_chain(definition, events, when, breakdown):
    start, end, as_of = when

    assert funnel_result(definition, events, start, end, as_of, breakdown) == brute_force(
        definition, events, start, end, as_of, breakdown
    )


@settings(max_examples=100, deadline=None)
@given(definition=definitions, events=shops(), when=ranges, seed=st.integers(0, 1000))
def test_the_funnel_does_not_depend_on_arrival_order(definition, events, when, seed):
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)

    assert funnel_result(definition, shuffled, *when, breakdown="source") == funnel_result(
        definition, events, *when, breakdown="source"
    )
