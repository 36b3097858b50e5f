"""Rule segments: JSON rules parsed into an immutable tree and evaluated as data (SPEC.md Customers).

A rule is {"all": [rules]}, {"any": [rules]}, {"not": rule}, a field comparison
{"field": name, "op": op, "value": v} or an event-count comparison
{"count": {"type": event type, "days": N}, "op": op, "value": v}, N counting the last N days.

Missing values: a field that is absent or null (a trait never sent, recency_days of a prospect, the tier
of a customer without one) fails eq, in and every ordering, and passes ne and not_in, which are exactly
the negations of eq and in; exists is true only for a present value. A value of another kind than the
rule's (a numeric trait against a string) compares like a missing one; numbers of any notation compare
with each other, strings in code-point order. Event counts absent from the
mapping are 0, so a sparse per-person count query can be passed as is.
"""

import operator
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from math import isfinite
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from libs.common.events import EVENT_TYPES, parse_rfc3339
from services.segmentation.domain.customers import CustomerFigures, LifecycleStage, MembershipTier
from services.segmentation.domain.rfm import RfmScore, RfmSegment

MAX_DEPTH = 10
MAX_NODES = 100
MAX_IN_VALUES = 1000
# Counts reach back as far as the 365-day customer lookback, which bounds the history a service keeps.
MAX_COUNT_DAYS = 365
TRAIT_PREFIX = "traits."


class Operator(StrEnum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"


class _Node(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


class AllOf(_Node):
    rules: tuple["Rule", ...] = Field(alias="all")


class AnyOf(_Node):
    rules: tuple["Rule", ...] = Field(alias="any")


class Not(_Node):
    rule: "Rule" = Field(alias="not")


class FieldComparison(_Node):
    field: str
    op: Operator
    value: Any = None


class EventWindow(_Node):
    """Events of one type in the last `days` days: (as_of - days, as_of]."""

    type: str
    days: int


class CountComparison(_Node):
    count: EventWindow
    op: Operator
    value: int | tuple[int, ...] | None = None


Rule = AllOf | AnyOf | Not | FieldComparison | CountComparison
for _model in (AllOf, AnyOf, Not):
    _model.model_rebuild()


@dataclass(frozen=True, slots=True)
class RuleLimits:
    """How big a rule may be: nesting depth, nodes, values of one ``in`` / ``not_in`` list (settings)."""

    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES
    max_in_values: int = MAX_IN_VALUES


# Rules already stored passed the limits of their day; reading them back must not fail if the settings shrank.
STORED_RULE_LIMITS = RuleLimits(max_depth=1_000, max_nodes=1_000_000, max_in_values=1_000_000)


class RuleError(ValueError):
    """A rule that cannot be parsed; the message names the path in the rule and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _read_integer(value: object) -> int:
    # A JSON true is a Python int; in a rule it is not a number.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("expected an integer")


def _read_money(value: object) -> Decimal:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with suppress(InvalidOperation):
            amount = Decimal(str(value))
            if amount.is_finite():
                return amount
    raise ValueError("expected a decimal number")


def _read_flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def _read_text(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _read_trait(value: object) -> str | int | float | bool:
    if isinstance(value, str | bool | int) or (isinstance(value, float) and isfinite(value)):
        return value
    raise ValueError("expected a string, number or boolean")


def _read_choice(choices: type[StrEnum]) -> Callable[[object], StrEnum]:
    def read(value: object) -> StrEnum:
        try:
            return choices(value)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(choices)}") from None

    return read


@dataclass(frozen=True, slots=True)
class _Kind:
    """The operators a field allows and how its rule values are read (raising ValueError with the reason)."""

    ops: frozenset[Operator]
    read: Callable[[object], object]


_ORDERINGS = {
    Operator.LT: operator.lt,
    Operator.LTE: operator.le,
    Operator.GT: operator.gt,
    Operator.GTE: operator.ge,
}
_ALL_OPS = frozenset(Operator)
_EQUALITY_OPS = frozenset({Operator.EQ, Operator.NE, Operator.IN, Operator.NOT_IN, Operator.EXISTS})

_INTEGER = _Kind(_ALL_OPS, _read_integer)
_MONEY = _Kind(_ALL_OPS, _read_money)
_TIMESTAMP = _Kind(_ALL_OPS, parse_rfc3339)
_TRAIT = _Kind(_ALL_OPS, _read_trait)
_TEXT = _Kind(_EQUALITY_OPS, _read_text)
_FLAG = _Kind(frozenset({Operator.EQ, Operator.NE, Operator.EXISTS}), _read_flag)
# Every person has a count for every window, so "exists" would always hold.
_EVENT_COUNT = _Kind(_ALL_OPS - {Operator.EXISTS}, _read_integer)

_PROFILE_FIELDS = {
    "orders": _INTEGER,
    "gmv": _MONEY,
    "first_order_at": _TIMESTAMP,
    "last_order_at": _TIMESTAMP,
    "first_seen_at": _TIMESTAMP,
    "last_seen_at": _TIMESTAMP,
    "recency_days": _INTEGER,
    "frequency": _INTEGER,
    "monetary": _MONEY,
    "r_score": _INTEGER,
    "f_score": _INTEGER,
    "m_score": _INTEGER,
    "rfm_segment": _Kind(_EQUALITY_OPS, _read_choice(RfmSegment)),
    "lifecycle": _Kind(_EQUALITY_OPS, _read_choice(LifecycleStage)),
    "tier": _Kind(_EQUALITY_OPS, _read_choice(MembershipTier)),
    "repeat_orders_90d": _INTEGER,
    "loyalty_milestone": _FLAG,
    "acquisition_source": _TEXT,
}
_RULE_KEYS = ("all", "any", "not", "field", "count")
_NOT_A_RULE = "expected an object with one of 'all', 'any', 'not', 'field' or 'count'"


def parse_rule(raw: object, limits: RuleLimits = RuleLimits()) -> Rule:
    """Validated, immutable rule tree from its JSON form, or RuleError (SPEC.md Customers, Rule segments)."""
    return _RuleParser(limits).rule(raw, "rule", depth=1)


class _RuleParser:
    def __init__(self, limits: RuleLimits) -> None:
        self.limits = limits
        self.nodes = 0

    def rule(self, raw: object, path: str, depth: int) -> Rule:
        # Both limits are checked before descending, so an oversized input costs at most max_nodes steps.
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise RuleError("rule", f"more than {self.limits.max_nodes} nodes")
        if depth > self.limits.max_depth:
            raise RuleError(path, f"nested deeper than {self.limits.max_depth} levels")
        if not isinstance(raw, dict):
            raise RuleError(path, _NOT_A_RULE)
        shapes = [key for key in _RULE_KEYS if key in raw]
        if not shapes:
            raise RuleError(path, _NOT_A_RULE)
        if len(shapes) > 1:
            raise RuleError(path, f"has {' and '.join(map(repr, shapes))}; a rule has exactly one of them")
        match shapes[0]:
            case "all":
                return AllOf(rules=self._rules(raw, "all", path, depth))
            case "any":
                return AnyOf(rules=self._rules(raw, "any", path, depth))
            case "not":
                _only_keys(raw, {"not"}, path)
                return Not(rule=self.rule(raw["not"], f"{path}.not", depth + 1))
            case "field":
                _only_keys(raw, {"field", "op", "value"}, path)
                field = raw["field"]
                op, operand = _operation(raw, _field_kind(field, f"{path}.field"), f"field {field!r}", path,
                                         self.limits)
                return FieldComparison(field=field, op=op, value=operand)
            case _:
                _only_keys(raw, {"count", "op", "value"}, path)
                window = _event_window(raw["count"], f"{path}.count")
                op, operand = _operation(raw, _EVENT_COUNT, "event counts", path, self.limits)
                return CountComparison(count=window, op=op, value=operand)

    def _rules(self, raw: dict[str, Any], key: str, path: str, depth: int) -> tuple[Rule, ...]:
        _only_keys(raw, {key}, path)
        children = raw[key]
        if not isinstance(children, list) or not children:
            raise RuleError(f"{path}.{key}", "expected a non-empty list of rules")
        return tuple(self.rule(child, f"{path}.{key}[{i}]", depth + 1) for i, child in enumerate(children))


def _only_keys(raw: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            raise RuleError(path, f"unexpected key {key!r}")


def _field_kind(field: object, path: str) -> _Kind:
    if isinstance(field, str):
        if field in _PROFILE_FIELDS:
            return _PROFILE_FIELDS[field]
        if field.startswith(TRAIT_PREFIX) and field != TRAIT_PREFIX:
            return _TRAIT
    raise RuleError(
        path, f"unknown field {field!r}; expected one of {', '.join(_PROFILE_FIELDS)} or traits.<name>"
    )


def _event_window(raw: object, path: str) -> EventWindow:
    if not isinstance(raw, dict):
        raise RuleError(path, "expected an object with 'type' and 'days'")
    _only_keys(raw, {"type", "days"}, path)
    event_type = raw.get("type")
    if event_type not in EVENT_TYPES:
        raise RuleError(
            f"{path}.type", f"unknown event type {event_type!r}; expected one of {', '.join(EVENT_TYPES)}"
        )
    days = raw.get("days")
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_COUNT_DAYS:
        raise RuleError(f"{path}.days", f"expected an integer from 1 to {MAX_COUNT_DAYS}")
    return EventWindow(type=event_type, days=days)


def _operation(raw: dict[str, Any], kind: _Kind, subject: str, path: str,
               limits: RuleLimits) -> tuple[Operator, Any]:
    if "op" not in raw:
        raise RuleError(f"{path}.op", "required")
    try:
        op = Operator(raw["op"])
    except ValueError:
        raise RuleError(
            f"{path}.op", f"unknown operator {raw['op']!r}; expected one of {', '.join(Operator)}"
        ) from None
    if op not in kind.ops:
        raise RuleError(f"{path}.op", f"{op} does not apply to {subject}")
    value = raw.get("value")
    if op is Operator.EXISTS:
        if value is not None:
            raise RuleError(f"{path}.value", "exists takes no value")
        return op, None
    if value is None:
        raise RuleError(f"{path}.value", f"required for {op}")
    if op in (Operator.IN, Operator.NOT_IN):
        if not isinstance(value, list) or not value:
            raise RuleError(f"{path}.value", f"{op} needs a non-empty list")
        if len(value) > limits.max_in_values:
            raise RuleError(f"{path}.value", f"{op} takes at most {limits.max_in_values} values")
        return op, tuple(_read(kind, item, f"{path}.value[{i}]") for i, item in enumerate(value))
    operand = _read(kind, value, f"{path}.value")
    if op in _ORDERINGS and isinstance(operand, bool):
        raise RuleError(f"{path}.value", f"{op} compares numbers, strings or timestamps, not true or false")
    return op, operand


def _read(kind: _Kind, value: object, path: str) -> object:
    try:
        return kind.read(value)
    except ValueError as error:
        raise RuleError(path, str(error)) from None


def matches(
    rule: Rule, figures: Mapping[str, Any], event_counts: Mapping[EventWindow, int] = MappingProxyType({})
) -> bool:
    """Whether one customer's figures satisfy the rule, evaluated as data (SPEC.md Customers, Rule segments)."""
    match rule:
        case AllOf(rules=rules):
            return all(matches(child, figures, event_counts) for child in rules)
        case AnyOf(rules=rules):
            return any(matches(child, figures, event_counts) for child in rules)
        case Not(rule=inner):
            return not matches(inner, figures, event_counts)
        case FieldComparison(field=field, op=op, value=operand):
            return _compare(op, _field_value(figures, field), operand)
        case CountComparison(count=window, op=op, value=operand):
            return _compare(op, event_counts.get(window, 0), operand)


def fields_used(rule: Rule) -> frozenset[str | EventWindow]:
    """Profile fields, traits.<name> and event-count windows the rule reads, so only those are loaded."""
    match rule:
        case AllOf(rules=rules) | AnyOf(rules=rules):
            return frozenset().union(*map(fields_used, rules))
        case Not(rule=inner):
            return fields_used(inner)
        case FieldComparison(field=field):
            return frozenset({field})
        case CountComparison(count=window):
            return frozenset({window})


def rule_figures(
    figures: CustomerFigures,
    rfm: RfmScore | None,
    *,
    first_seen_at: datetime | None,
    last_seen_at: datetime | None,
    acquisition_source: str | None,
    traits: Mapping[str, Any],
) -> dict[str, Any]:
    """The mapping `matches` reads, keyed by the rule language's field names (SPEC.md API surface, segmentation)."""
    return {
        **{f.name: getattr(figures, f.name) for f in fields(figures)},
        "r_score": rfm.r_score if rfm else None,
        "f_score": rfm.f_score if rfm else None,
        "m_score": rfm.m_score if rfm else None,
        "rfm_segment": rfm.segment if rfm else None,
        "first_seen_at": first_seen_at,
        "last_seen_at": last_seen_at,
        "acquisition_source": acquisition_source,
        "traits": traits,
    }


def _field_value(figures: Mapping[str, Any], field: str) -> Any:
    if field.startswith(TRAIT_PREFIX):
        return (figures.get("traits") or {}).get(field.removeprefix(TRAIT_PREFIX))
    return figures.get(field)


def _compare(op: Operator, value: Any, operand: Any) -> bool:
    match op:
        case Operator.EXISTS:
            return value is not None
        case Operator.EQ:
            return _equal(value, operand)
        case Operator.NE:
            return not _equal(value, operand)
        case Operator.IN:
            return any(_equal(value, item) for item in operand)
        case Operator.NOT_IN:
            return not any(_equal(value, item) for item in operand)
    return _comparable(value, operand) and _ORDERINGS[op](value, operand)


def _equal(value: Any, operand: Any) -> bool:
    return _comparable(value, operand) and value == operand


def _comparable(value: Any, operand: Any) -> bool:
    kind = _value_kind(value)
    return kind is not None and kind is _value_kind(operand)


def _value_kind(value: Any) -> type | None:
    # bool before int: true is not the number 1 here; all numbers compare with each other.
    for kind in (bool, str, datetime):
        if isinstance(value, kind):
            return kind
    if isinstance(value, int | float | Decimal):
        return Decimal
    return None
