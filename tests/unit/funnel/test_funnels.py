import random
from datetime import timedelta
from decimal import Decimal

import pytest

from services.funnel.domain.funnels import (
    DEFAULT_FUNNEL,
    FunnelDefinition,
    FunnelStep,
    funnel_result,
)

from .builders import at, cart, inquiry, item, order, refund, view

WEEK = timedelta(days=7)
RANGE = (at(), at(days=1))
LATER = at(days=30)


def funnel(*steps: FunnelStep | str, window: timedelta = WEEK, unit: str = "person") -> FunnelDefinition:
    return FunnelDefinition(
        "test",
        tuple(FunnelStep(step) if isinstance(step, str) else step for step in steps),  # type: ignore[arg-type]
        int(window.total_seconds()),
        unit,  # type: ignore[arg-type]
    )


def test_the_default_funnel_is_view_cart_order_over_seven_days_by_person():
    assert [step.type for step in DEFAULT_FUNNEL.steps] == ["view", "add_to_cart", "order"]
    assert DEFAULT_FUNNEL.steps[0] == FunnelStep("view")
    assert (DEFAULT_FUNNEL.name, DEFAULT_FUNNEL.window_seconds, DEFAULT_FUNNEL.unit) == (
        "default",
        604800,
        "person",
    )


def test_counts_conversion_and_step_conversion():
    events = [
        view("ann", at(hours=1)),
        cart("ann", at(hours=2)),
        order("ann", at(hours=3), "o1", "40"),
        view("bob", at(hours=1)),
        cart("bob", at(hours=2)),
        view("cid", at(hours=1)),
        view("dee", at(hours=1)),
    ]

    result = funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=LATER)

    assert result.counts == (4, 2, 1)
    assert result.conversion == (1.0, 0.5, 0.25)
    assert result.step_conversion == (None, 0.5, 0.5)
    assert result.in_progress == (0, 0, 0)
    assert result.median_seconds_to_convert == 7200
    assert result.converted_value == Decimal("40")
    assert result.breakdown is None


def test_a_funnel_without_entrants_has_no_ratios():
    result = funnel_result(DEFAULT_FUNNEL, [cart("ann", at(hours=1))], *RANGE, as_of=LATER)

    assert result.counts == (0, 0, 0)
    assert result.conversion == (None, None, None)
    assert result.step_conversion == (None, None, None)
    assert result.median_seconds_to_convert is None
    assert result.converted_value == Decimal(0)


def test_a_step_landing_exactly_at_the_window_end_counts():
    events = [view("ann", at(hours=1)), cart("ann", at(hours=1) + WEEK)]

    assert funnel_result(funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER).counts == (1, 1)


def test_a_step_one_microsecond_past_the_window_does_not_count():
    events = [view("ann", at(hours=1)), cart("ann", at(hours=1) + WEEK + timedelta(microseconds=1))]

    assert funnel_result(funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER).counts == (1, 0)


def test_later_steps_may_fall_after_to_but_never_after_as_of():
    events = [view("ann", at(hours=20)), cart("ann", at(days=3))]
    definition = funnel("view", "add_to_cart")

    assert funnel_result(definition, events, *RANGE, as_of=at(days=3)).counts == (1, 1)
    assert funnel_result(definition, events, *RANGE, as_of=at(days=3, microseconds=-1)).counts == (1, 0)


def test_only_first_step_events_in_range_make_entrants():
    events = [
        view("ann", at(hours=-1)),
        cart("ann", at(hours=1)),
        view("bob", at(days=1)),
        cart("bob", at(days=1)),
    ]

    assert funnel_result(funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER).counts == (0, 0)


def test_steps_before_the_first_step_do_not_count():
    events = [cart("ann", at(hours=1)), view("ann", at(hours=2))]

    assert funnel_result(funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER).counts == (1, 0)


def test_simultaneous_events_may_chain_in_either_order():
    events = [cart("ann", at(hours=1), event_id="a"), view("ann", at(hours=1), event_id="b")]

    result = funnel_result(funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER)

    assert result.counts == (1, 1)
    assert result.median_seconds_to_convert == 0


def test_one_event_cannot_fill_two_steps():
    one_view = [view("ann", at(hours=1))]
    two_views_at_once = [view("ann", at(hours=1)), view("ann", at(hours=1))]
    definition = funnel("view", "view")

    assert funnel_result(definition, one_view, *RANGE, as_of=LATER).counts == (1, 0)
    assert funnel_result(definition, two_views_at_once, *RANGE, as_of=LATER).counts == (1, 1)


def test_the_longest_chain_is_found_where_an_earliest_match_greedy_choice_would_stop_short():
    # "a" (shoes) sorts first, so a greedy pass would give it to the unfiltered second step and leave the
    # shoes-only third step without a match; giving "b" to step 2 and "a" to step 3 reaches level 3.
    events = [
        view("ann", at(hours=1), "p0"),
        cart("ann", at(hours=2), "shoe", category="shoes", event_id="a"),
        cart("ann", at(hours=2), "hat", category="hats", event_id="b"),
    ]
    definition = funnel("view", "add_to_cart", FunnelStep("add_to_cart", category="shoes"))

    assert funnel_result(definition, events, *RANGE, as_of=LATER).counts == (1, 1, 1)


def test_time_to_convert_is_the_fastest_complete_chain_not_the_first_started():
    events = [
        view("ann", at(hours=1)),
        view("ann", at(hours=5)),
        cart("ann", at(hours=6)),
        order("ann", at(hours=7), "o1"),
    ]

    result = funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=LATER)

    assert result.counts == (1, 1, 1)
    assert result.median_seconds_to_convert == 2 * 3600


def test_a_chain_starting_at_the_instant_another_chain_takes_a_step_keeps_its_later_start():
    events = [
        view("ann", at(hours=1)),
        view("ann", at(hours=5)),
        cart("ann", at(hours=5)),
        order("ann", at(hours=6), "o1"),
    ]

    assert funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=LATER).median_seconds_to_convert == 3600


def test_median_time_to_convert_of_an_even_count_is_the_mean_of_the_middle_two():
    events = [
        view("ann", at(hours=1)),
        cart("ann", at(hours=2)),
        view("bob", at(hours=1)),
        cart("bob", at(hours=5)),
    ]

    assert funnel_result(
        funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER
    ).median_seconds_to_convert == (2.5 * 3600)


def test_a_unit_still_inside_its_window_at_as_of_is_in_progress_not_dropped():
    events = [view("ann", at(hours=1)), cart("ann", at(hours=2)), view("bob", at(hours=1))]
    as_of = at(hours=1) + WEEK - timedelta(microseconds=1)

    result = funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=as_of)

    assert result.counts == (2, 1, 0)
    assert result.in_progress == (1, 1, 0)


def test_a_window_ending_exactly_at_as_of_has_dropped_off():
    events = [view("ann", at(hours=1))]

    assert funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=at(hours=1) + WEEK).in_progress == (0, 0, 0)


def test_in_progress_looks_at_any_start_reaching_the_units_level():
    # The early view reached level 2 but its window closed; the late view reached level 2 too and is open.
    events = [
        view("ann", at(hours=1)),
        cart("ann", at(hours=2)),
        view("ann", at(hours=20)),
        cart("ann", at(hours=21)),
    ]
    as_of = at(hours=20) + WEEK - timedelta(seconds=1)

    assert funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=as_of).in_progress == (0, 1, 0)


def test_an_order_step_matches_only_the_orders_counting_completed_event():
    events = [
        order("ann", at(hours=-2), "o1"),
        view("ann", at(hours=1)),
        order("ann", at(hours=2), "o1"),  # a duplicate of the earlier completed event
        refund("ann", at(hours=3), "o1"),
    ]

    assert funnel_result(funnel("view", "order"), events, *RANGE, as_of=LATER).counts == (1, 0)


def test_converted_value_is_the_earliest_completing_order_total():
    events = [
        view("ann", at(hours=1)),
        order("ann", at(hours=3), "o-late", "70"),
        order("ann", at(hours=2), "o-b", "30", event_id="zz"),
        order("ann", at(hours=2), "o-a", "20", event_id="aa"),
    ]

    assert funnel_result(funnel("view", "order"), events, *RANGE, as_of=LATER).converted_value == Decimal(
        "20"
    )


def test_converted_value_is_none_for_a_funnel_not_ending_in_an_order():
    events = [view("ann", at(hours=1)), inquiry("ann", at(hours=2))]

    result = funnel_result(funnel("view", "inquiry"), events, *RANGE, as_of=LATER)

    assert result.counts == (1, 1)
    assert result.converted_value is None


def test_where_filters_match_product_category_and_source_and_order_items():
    events = [
        view("ann", at(hours=1), "shoe", category="shoes", source="ads"),
        view("bob", at(hours=1), "shoe", category="shoes"),
        view("cid", at(hours=1), "hat", category="hats", source="ads"),
        order("ann", at(hours=2), "o1", "50", (item("hat", 1, "20"), item("shoe", 1, "30"))),
        order("cid", at(hours=2), "o2", "20", (item("hat", 1, "20"),)),
    ]
    definition = funnel(
        FunnelStep("view", category="shoes", source="ads"), FunnelStep("order", product_id="shoe")
    )

    result = funnel_result(definition, events, *RANGE, as_of=LATER)

    assert result.counts == (1, 1)
    assert result.converted_value == Decimal("50")


def test_a_category_filter_uses_the_products_latest_category():
    events = [
        view("ann", at(hours=1), "p1", category="shoes"),
        view("bob", at(hours=2), "p1", category="boots"),
    ]

    result = funnel_result(funnel(FunnelStep("view", category="boots")), events, *RANGE, as_of=LATER)

    assert result.counts == (2,)


def test_a_product_funnel_follows_each_person_and_product_apart():
    events = [
        view("ann", at(hours=1), "p1"),
        view("ann", at(hours=1), "p2"),
        cart("ann", at(hours=2), "p2"),
        order("ann", at(hours=3), "o1", "35", (item("p1", 2, "10"), item("p3", 1, "15"))),
    ]

    result = funnel_result(funnel("view", "order", unit="product"), events, *RANGE, as_of=LATER)

    assert result.counts == (2, 1)
    assert result.converted_value == Decimal("20")


def test_a_product_funnel_step_matches_only_events_about_that_product():
    events = [view("ann", at(hours=1), "p1"), cart("ann", at(hours=2), "p2")]

    assert funnel_result(
        funnel("view", "add_to_cart", unit="product"), events, *RANGE, as_of=LATER
    ).counts == (1, 0)


def test_breakdown_by_source_uses_the_first_entry_event_in_range():
    events = [
        view("ann", at(hours=-1), source="mail"),
        view("ann", at(hours=1), source="ads", event_id="b"),
        view("ann", at(hours=1), source="search", event_id="a"),
        cart("ann", at(hours=2)),
        view("bob", at(hours=3)),
    ]

    result = funnel_result(funnel("view", "add_to_cart"), events, *RANGE, as_of=LATER, breakdown="source")

    assert result.counts == (2, 1)
    assert result.breakdown is not None
    assert list(result.breakdown) == ["(direct)", "search"]
    assert result.breakdown["search"].counts == (1, 1)
    assert result.breakdown["(direct)"].counts == (1, 0)
    assert result.breakdown["search"].breakdown is None


def test_breakdown_by_category_takes_an_orders_first_item():
    events = [
        view("ann", at(hours=-1), "hat", category="hats"),
        view("ann", at(hours=-1), "shoe", category="shoes"),
        order("ann", at(hours=1), "o1", "30", (item("shoe", 1, "10"), item("hat", 1, "20"))),
        order("bob", at(hours=1), "o2", "5", (item("mystery", 1, "5"),)),
    ]

    result = funnel_result(funnel("order"), events, *RANGE, as_of=LATER, breakdown="category")

    assert result.breakdown is not None
    assert {value: part.converted_value for value, part in result.breakdown.items()} == {
        "(none)": Decimal("5"),
        "shoes": Decimal("30"),
    }


def test_breakdown_by_category_of_a_product_funnel_is_the_units_product_category():
    events = [
        view("ann", at(hours=-1), "hat", category="hats"),
        view("ann", at(hours=-1), "shoe", category="shoes"),
        order("ann", at(hours=1), "o1", "30", (item("shoe", 1, "10"), item("hat", 1, "20"))),
    ]

    result = funnel_result(funnel("order", unit="product"), events, *RANGE, as_of=LATER, breakdown="category")

    assert result.breakdown is not None
    assert {value: part.converted_value for value, part in result.breakdown.items()} == {
        "hats": Decimal("20"),
        "shoes": Decimal("10"),
    }


def test_input_order_does_not_change_the_result():
    events = [
        view("ann", at(hours=1), event_id="v1"),
        view("ann", at(hours=1), event_id="v2"),
        cart("ann", at(hours=1), event_id="c1"),
        order("ann", at(hours=1), "o1", "10", event_id="o1"),
        order("ann", at(hours=1), "o2", "12", event_id="o0"),
        view("bob", at(hours=4), source="ads"),
        cart("bob", at(days=2)),
    ]
    expected = funnel_result(DEFAULT_FUNNEL, events, *RANGE, as_of=at(days=3), breakdown="source")

    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        assert (
            funnel_result(DEFAULT_FUNNEL, shuffled, *RANGE, as_of=at(days=3), breakdown="source") == expected
        )
    assert expected.counts == (2, 2, 1)
    assert expected.converted_value == Decimal("12")


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (lambda: FunnelDefinition("empty", ()), "at least one step"),
        (lambda: FunnelDefinition("w", (FunnelStep("view"),), window_seconds=-1), "window_seconds"),
        (lambda: FunnelDefinition("u", (FunnelStep("view"),), unit="shop"), "unit"),  # type: ignore[arg-type]
        (lambda: FunnelStep("click"), "event type"),  # type: ignore[arg-type]
    ],
)
def test_invalid_definitions_are_refused(definition, message):
    with pytest.raises(ValueError, match=message):
        definition()
