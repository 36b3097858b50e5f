from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from services.segmentation.domain.customers import (
    LifecycleStage,
    MembershipTier,
    OrderFact,
    customer_figures,
)
from services.segmentation.domain.rfm import RfmScore, RfmSegment
from services.segmentation.domain.rules import (
    AllOf,
    EventWindow,
    FieldComparison,
    Operator,
    RuleError,
    fields_used,
    matches,
    parse_rule,
    rule_figures,
)

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
PROFILE_FIELDS = (
    "orders, gmv, first_order_at, last_order_at, first_seen_at, last_seen_at, recency_days, frequency, "
    "monetary, r_score, f_score, m_score, rfm_segment, lifecycle, tier, repeat_orders_90d, loyalty_milestone, "
    "acquisition_source"
)
NOT_A_RULE = "expected an object with one of 'all', 'any', 'not', 'field' or 'count'"
EXAMPLE = "e.g. 2026-05-01T10:00:00+08:00"
ORDERS_GT_1 = {"field": "orders", "op": "gt", "value": 1}


def leaf(field, op, value=None):
    return {"field": field, "op": op} | ({} if value is None else {"value": value})


def nested_nots(levels):
    rule = ORDERS_GT_1
    for _ in range(levels):
        rule = {"not": rule}
    return rule


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([ORDERS_GT_1], f"rule: {NOT_A_RULE}"),
        ({}, f"rule: {NOT_A_RULE}"),
        ({"all": [ORDERS_GT_1, "orders > 1"]}, f"rule.all[1]: {NOT_A_RULE}"),
        (
            {"all": [ORDERS_GT_1], "field": "orders"},
            "rule: has 'all' and 'field'; a rule has exactly one of them",
        ),
        ({"not": ORDERS_GT_1, "op": "eq"}, "rule: unexpected key 'op'"),
        ({"any": [ORDERS_GT_1 | {"vaule": 2}]}, "rule.any[0]: unexpected key 'vaule'"),
        ({"all": []}, "rule.all: expected a non-empty list of rules"),
        ({"any": ORDERS_GT_1}, "rule.any: expected a non-empty list of rules"),
        (
            {"all": [ORDERS_GT_1, {"not": leaf("revenue", "gt", 1)}]},
            f"rule.all[1].not.field: unknown field 'revenue'; expected one of {PROFILE_FIELDS} or traits.<name>",
        ),
        (
            leaf("traits.", "exists"),
            f"rule.field: unknown field 'traits.'; expected one of {PROFILE_FIELDS} or traits.<name>",
        ),
        ({"field": "orders", "value": 1}, "rule.op: required"),
        (
            leaf("orders", "like", 1),
            "rule.op: unknown operator 'like'; expected one of eq, ne, lt, lte, gt, gte, in, not_in, exists",
        ),
        (leaf("lifecycle", "lt", "new"), "rule.op: lt does not apply to field 'lifecycle'"),
        (leaf("acquisition_source", "gte", "a"), "rule.op: gte does not apply to field 'acquisition_source'"),
        (leaf("loyalty_milestone", "in", [True]), "rule.op: in does not apply to field 'loyalty_milestone'"),
        (leaf("orders", "eq"), "rule.value: required for eq"),
        (leaf("tier", "exists", "gold"), "rule.value: exists takes no value"),
        (leaf("orders", "eq", "3"), "rule.value: expected an integer"),
        (leaf("orders", "eq", 3.0), "rule.value: expected an integer"),
        (leaf("r_score", "eq", True), "rule.value: expected an integer"),
        (leaf("gmv", "gte", "a lot"), "rule.value: expected a decimal number"),
        (leaf("monetary", "gte", "NaN"), "rule.value: expected a decimal number"),
        (leaf("gmv", "gte", False), "rule.value: expected a decimal number"),
        (
            leaf("last_order_at", "gt", "2025-01-01T00:00:00"),
            f"rule.value: '2025-01-01T00:00:00' is not an RFC 3339 timestamp with an offset, {EXAMPLE}",
        ),
        (
            leaf("first_seen_at", "lt", "yesterday"),
            f"rule.value: 'yesterday' is not an RFC 3339 timestamp with an offset, {EXAMPLE}",
        ),
        (
            leaf("first_seen_at", "lt", "0001-01-01T00:00:00+01:00"),
            "rule.value: '0001-01-01T00:00:00+01:00' is not a valid date and time: date value out of range",
        ),
        (
            leaf("last_seen_at", "in", ["2026-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"]),
            "rule.value[1]: '9999-12-31T23:59:59-01:00' is not a valid date and time: date value out of range",
        ),
        (
            leaf("first_seen_at", "lt", 1735689600),
            f"rule.value: must be an RFC 3339 timestamp string, {EXAMPLE}",
        ),
        (
            leaf("lifecycle", "eq", "sleeping"),
            "rule.value: expected one of prospect, new, active, dormant, churned",
        ),
        (leaf("tier", "ne", "platinum"), "rule.value: expected one of silver, gold, diamond"),
        (
            leaf("rfm_segment", "in", ["champion", "champions"]),
            "rule.value[1]: expected one of hibernating, at_risk, cannot_lose, about_to_sleep, need_attention, "
            "loyal, promising, potential_loyalist, new, champion",
        ),
        (leaf("loyalty_milestone", "eq", "yes"), "rule.value: expected true or false"),
        (leaf("acquisition_source", "eq", 5), "rule.value: expected a string"),
        (leaf("traits.plan", "eq", {"name": "pro"}), "rule.value: expected a string, number or boolean"),
        (
            leaf("traits.vip", "lt", True),
            "rule.value: lt compares numbers, strings or timestamps, not true or false",
        ),
        (leaf("orders", "in", 3), "rule.value: in needs a non-empty list"),
        (leaf("orders", "not_in", []), "rule.value: not_in needs a non-empty list"),
        (leaf("orders", "in", [1, "2"]), "rule.value[1]: expected an integer"),
        ({"count": "views", "op": "gt", "value": 1}, "rule.count: expected an object with 'type' and 'days'"),
        (
            {"count": {"type": "click", "days": 7}, "op": "gt", "value": 1},
            "rule.count.type: unknown event type 'click'; expected one of view, add_to_cart, inquiry, order, review",
        ),
        (
            {"count": {"type": "view", "days": 0}, "op": "gt", "value": 1},
            "rule.count.days: expected an integer from 1 to 365",
        ),
        (
            {"count": {"type": "view", "days": 366}, "op": "gt", "value": 1},
            "rule.count.days: expected an integer from 1 to 365",
        ),
        (
            {"count": {"type": "view", "days": "7"}, "op": "gt", "value": 1},
            "rule.count.days: expected an integer from 1 to 365",
        ),
        (
            {"count": {"type": "view"}, "op": "gt", "value": 1},
            "rule.count.days: expected an integer from 1 to 365",
        ),
        (
            {"count": {"type": "view", "days": 7, "hours": 1}, "op": "gt", "value": 1},
            "rule.count: unexpected key 'hours'",
        ),
        (
            {"count": {"type": "view", "days": 7}, "op": "exists"},
            "rule.op: exists does not apply to event counts",
        ),
        (
            {"count": {"type": "view", "days": 7}, "op": "gte", "value": 1.5},
            "rule.value: expected an integer",
        ),
        (nested_nots(10), "rule" + ".not" * 10 + ": nested deeper than 10 levels"),
        (nested_nots(10_000), "rule" + ".not" * 10 + ": nested deeper than 10 levels"),
        ({"any": [ORDERS_GT_1] * 100}, "rule: more than 100 nodes"),
        ({"any": [ORDERS_GT_1] * 1_000_000}, "rule: more than 100 nodes"),
    ],
)
def test_invalid_rules_are_refused_naming_the_path_and_reason(raw, message):
    with pytest.raises(RuleError) as refused:
        parse_rule(raw)

    assert str(refused.value) == message


def test_rules_at_the_depth_and_size_limits_are_accepted():
    parse_rule(nested_nots(9))
    parse_rule({"any": [ORDERS_GT_1] * 99})


def test_a_parsed_rule_is_immutable_and_round_trips_through_json():
    rule = parse_rule(
        {
            "all": [
                leaf("gmv", "gte", 2000.5),
                leaf("last_order_at", "gt", "2025-01-01T08:00:00+08:00"),
                {"not": leaf("lifecycle", "in", ["dormant", "churned"])},
                {
                    "any": [
                        leaf("traits.plan", "exists"),
                        {"count": {"type": "inquiry", "days": 30}, "op": "gte", "value": 2},
                    ]
                },
            ]
        }
    )

    assert parse_rule(rule.model_dump(mode="json")) == rule
    assert rule.rules[0] == FieldComparison(field="gmv", op=Operator.GTE, value=Decimal("2000.5"))
    with pytest.raises(ValidationError):
        rule.rules = ()


def test_fields_used_lists_profile_fields_traits_and_event_windows():
    rule = parse_rule(
        {
            "any": [
                {"all": [leaf("r_score", "gte", 4), leaf("traits.city", "eq", "杭州")]},
                {"not": {"count": {"type": "add_to_cart", "days": 7}, "op": "gt", "value": 0}},
                leaf("r_score", "lte", 2),
            ]
        }
    )

    assert fields_used(rule) == {"r_score", "traits.city", EventWindow(type="add_to_cart", days=7)}


CUSTOMER = {
    "orders": 3,
    "gmv": Decimal("2000.00"),
    "last_order_at": datetime(2025, 6, 1, tzinfo=UTC),
    "recency_days": None,
    "lifecycle": LifecycleStage.ACTIVE,
    "tier": None,
    "loyalty_milestone": False,
    "acquisition_source": "douyin",
    "traits": {"plan": "pro", "age": 30, "score": 2.5, "vip": True, "zip": "310000"},
}


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("orders", "eq", 3, True),
        ("orders", "eq", 4, False),
        ("orders", "ne", 4, True),
        ("orders", "ne", 3, False),
        ("orders", "lt", 3, False),
        ("orders", "lt", 4, True),
        ("orders", "lte", 3, True),
        ("orders", "lte", 2, False),
        ("orders", "gt", 3, False),
        ("orders", "gt", 2, True),
        ("orders", "gte", 3, True),
        ("orders", "gte", 4, False),
        ("orders", "in", [1, 3], True),
        ("orders", "in", [1, 2], False),
        ("orders", "not_in", [1, 2], True),
        ("orders", "not_in", [3], False),
        ("orders", "exists", None, True),
        ("gmv", "gte", 2000, True),
        ("gmv", "eq", "2000", True),
        ("gmv", "gt", "1999.99", True),
        ("gmv", "gt", "2000.00", False),
        ("last_order_at", "gt", "2025-06-01T07:59:59+08:00", True),
        ("last_order_at", "eq", "2025-06-01T08:00:00+08:00", True),
        ("lifecycle", "eq", "active", True),
        ("lifecycle", "in", ["dormant", "churned"], False),
        ("loyalty_milestone", "eq", False, True),
        ("loyalty_milestone", "ne", True, True),
        ("acquisition_source", "in", ["douyin", "xiaohongshu"], True),
        ("traits.plan", "eq", "pro", True),
        ("traits.age", "gte", 30, True),
        ("traits.age", "lt", 30.5, True),
        ("traits.score", "eq", 2.5, True),
        ("traits.zip", "gte", "310000", True),
        ("traits.vip", "eq", True, True),
    ],
)
def test_every_operator_compares_a_present_value(field, op, value, expected):
    assert matches(parse_rule(leaf(field, op, value)), CUSTOMER) is expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", 5, False),
        ("ne", 5, True),
        ("lt", 5, False),
        ("lte", 5, False),
        ("gt", 5, False),
        ("gte", 5, False),
        ("in", [5], False),
        ("not_in", [5], True),
        ("exists", None, False),
    ],
)
@pytest.mark.parametrize("field", ["recency_days", "traits.height", "first_seen_at_missing_from_mapping"])
def test_a_missing_value_fails_every_operator_but_ne_and_not_in(field, op, value, expected):
    field, figures = (field, CUSTOMER) if field != "first_seen_at_missing_from_mapping" else ("orders", {})

    assert matches(parse_rule(leaf(field, op, value)), figures) is expected


def test_a_missing_tier_is_not_gold_and_exists_is_false():
    assert matches(parse_rule(leaf("tier", "ne", "gold")), CUSTOMER) is True
    assert matches(parse_rule(leaf("tier", "exists")), CUSTOMER) is False
    assert matches(parse_rule({"not": leaf("tier", "exists")}), CUSTOMER) is True


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("traits.zip", "eq", 310000, False),
        ("traits.zip", "ne", 310000, True),
        ("traits.zip", "gt", 1, False),
        ("traits.age", "eq", "30", False),
        ("traits.age", "lt", "40", False),
        ("traits.vip", "eq", 1, False),
        ("traits.age", "eq", True, False),
        ("traits.age", "in", ["30", 30], True),
    ],
)
def test_a_value_of_another_kind_compares_like_a_missing_one(field, op, value, expected):
    assert matches(parse_rule(leaf(field, op, value)), CUSTOMER) is expected


def test_all_any_and_not_combine_their_rules():
    yes, no = leaf("orders", "eq", 3), leaf("orders", "eq", 4)

    assert matches(parse_rule({"all": [yes, yes]}), CUSTOMER) is True
    assert matches(parse_rule({"all": [yes, no]}), CUSTOMER) is False
    assert matches(parse_rule({"any": [no, yes]}), CUSTOMER) is True
    assert matches(parse_rule({"any": [no, no]}), CUSTOMER) is False
    assert matches(parse_rule({"not": no}), CUSTOMER) is True
    assert matches(parse_rule({"not": {"all": [yes, no]}}), CUSTOMER) is True


def test_not_of_an_ordering_holds_for_a_missing_value():
    assert matches(parse_rule({"not": leaf("recency_days", "lt", 30)}), CUSTOMER) is True


def test_event_counts_compare_the_window_named_and_default_to_zero():
    views_7d = {"count": {"type": "view", "days": 7}, "op": "gte", "value": 3}
    no_cart_30d = {"count": {"type": "add_to_cart", "days": 30}, "op": "eq", "value": 0}
    counts = {EventWindow(type="view", days=7): 3, EventWindow(type="view", days=30): 1}

    assert matches(parse_rule(views_7d), CUSTOMER, counts) is True
    assert matches(parse_rule(views_7d), CUSTOMER, {EventWindow(type="view", days=30): 9}) is False
    assert matches(parse_rule(no_cart_30d), CUSTOMER, counts) is True
    assert matches(parse_rule(no_cart_30d | {"op": "in", "value": [1, 2]}), CUSTOMER) is False


def test_rule_figures_name_every_field_of_the_rule_language():
    orders = [
        OrderFact(f"o{days}", "alice", AS_OF - timedelta(days=days), Decimal(1200), f"e{days}")
        for days in (40, 20, 10)
    ]
    figures = rule_figures(
        customer_figures(orders, AS_OF),
        RfmScore(5, 4, 5, RfmSegment.CHAMPION),
        first_seen_at=AS_OF - timedelta(days=60),
        last_seen_at=AS_OF,
        acquisition_source="baidu",
        traits={"city": "杭州"},
    )
    vip = parse_rule(
        {
            "all": [
                leaf("tier", "eq", "gold"),
                leaf("rfm_segment", "eq", "champion"),
                leaf("repeat_orders_90d", "eq", 2),
                leaf("first_seen_at", "lt", "2025-05-02T00:00:00Z"),
                leaf("traits.city", "eq", "杭州"),
            ]
        }
    )

    assert set(figures) == set(PROFILE_FIELDS.split(", ")) | {"traits"}
    assert figures["tier"] == MembershipTier.GOLD
    assert matches(vip, figures) is True


def test_rule_figures_leave_scores_missing_outside_the_rfm_population():
    figures = rule_figures(
        customer_figures([], AS_OF),
        None,
        first_seen_at=None,
        last_seen_at=None,
        acquisition_source=None,
        traits={},
    )

    assert [figures[f] for f in ("r_score", "f_score", "m_score", "rfm_segment")] == [None] * 4
    assert matches(parse_rule(leaf("lifecycle", "eq", "prospect")), figures) is True


def test_rules_built_in_code_evaluate_like_parsed_ones():
    rule = AllOf(rules=(FieldComparison(field="orders", op=Operator.GTE, value=3),))

    assert matches(rule, CUSTOMER) is True
