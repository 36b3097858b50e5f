"""SPEC.md "Funnel" computed by DuckDB over the fact copy (services/funnel/adapters/mirror.py).

The same answer as ``services.funnel.domain.funnels.funnel_result`` (the reference, checked against this in
the tests), for the definitions in which no event can match two steps; ``None`` for the others, which the
caller answers with the reference.

Why that restriction lets set-based SQL be exact: when every event matches at most one step, chains of
distinct events are simply chains, so for every event e of step j the latest start L(e) of a chain ending at e
is a function of the earlier steps only:

- L(e) = t(e) for a step-1 event in range;
- for a later step, L(e) = the largest L(e') over the previous step's events e' with t(e') <= t(e), provided
  t(e) <= that L + W (else no chain reaches e). Among the events a chain reaches, L never decreases with time,
  so that largest L is the one of the latest reached event at or before t(e): one ASOF JOIN per step. When step 1
  is every view (no filter), step 2's L(e) is its person's latest view at or before t(e) if that lies in range:
  read from ``prior_views`` (prior_views.py), which the copy's fold keeps, for all but the persons it may be stale for.

Then, per unit: its level is the furthest step reached, ``latest_start_at_level`` the largest L there
(in_progress), its time to convert the smallest ``t(ek) - L(ek)``, and its completing event the last-step
event with the smallest event_id at the earliest instant any chain completes (converted_value), as the
reference defines them. Its entry (breakdown) is its first step-1 event in range, ties by event_id.

Units are joined and grouped by integers, much cheaper than the strings: the person number each row of the copy
carries (``ph``, person_hashes.py; with the product_id for unit = product) when the copy's registry shows that no
two keys share one. Otherwise (a recorded clash; or other files of the rows, ``kept=False``) by a 64-bit hash
computed here: two units sharing it would be merged, so the query also reports whether that could have happened:
a unit's step-1 events holding two keys, or an event a chain reached whose keys are not those of the entrant with
its number. Then the answer is computed again with the keys themselves. (Other events of a key sharing an
entrant's number change nothing: a key without step-1 events in range has no chain of its own, and an event no
chain reaches is in no answer.)

Later steps only look at the units a chain reached before them, and an order step checks the counting rule
only for their orders: the work shrinks with each step. By stored numbers and without a breakdown, chains start
only in the units with a step-2 event: the others are level-1 units, counted by one grouping of the step-1 rows
(entrants, and those whose latest step-1 event is within W of as_of), less the units that went further.

Matching follows the reference: an order step matches only its order's counting event (the earliest
completed one, ties by event_id, among events up to as_of); product_id and category match the event's
product or any order line (for unit = product: the unit's product only); a product's category is the latest
carried up to as_of (ties by event_id, the event's own product before its lines, lines in order).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime
from decimal import Decimal
from typing import Any

import duckdb

from libs.common.events import epoch_micros
from services.funnel.domain.funnels import (
    UNKNOWN_CATEGORY,
    Breakdown,
    FunnelDefinition,
    FunnelResult,
    FunnelStep,
    Unit,
)
from services.funnel.domain.stats import median, ratio
from services.funnel.engine import kpi_state, kpis, person_hashes, prior_views, product_state
from services.funnel.engine.facts import first_completed

_MAX_BIGINT = 2**63 - 1
# How units are numbered for joins and groups, from their keys (a collision is detected, and the answer is then
# computed with the keys themselves).
_HASH = "hash({})"


def funnel_result_sql(
    cursor: duckdb.DuckDBPyConnection,
    definition: FunnelDefinition,
    start: datetime,
    end: datetime,
    as_of: datetime,
    breakdown: Breakdown | None,
    *,
    kept: bool = True,
) -> FunnelResult | None:
    """``funnel_result`` of the copy's facts (the same FunnelResult, to the Decimal and the float), or None when
    this path does not answer exactly: a definition with two steps one event could match (``handles``), or a
    range too long to pack a start time with a level in 63 bits (over 25,000 years). ``kept``: the rows carry
    their person number and the copy its registry (person_hashes.py); without (other files of the same rows),
    units are numbered by a hash computed here and checked."""
    if not handles(definition):
        return None
    start_us, end_us, as_of_us = epoch_micros(start), epoch_micros(end), epoch_micros(as_of)
    window_us = definition.window_seconds * 1_000_000
    # Step-1 events in [start, end), later ones in [start, end + W); all up to as_of.
    first_end = min(end_us, as_of_us + 1)
    horizon = min(end_us + window_us, as_of_us + 1)
    step_count = len(definition.steps)
    if first_end <= start_us:
        return _result(definition, step_count, {}, breakdown is not None)
    # A unit's level and latest start are packed into one BIGINT: level * span + (start - start_us).
    span = first_end - start_us
    if (step_count + 1) * span > _MAX_BIGINT:
        return None
    bounds = {"start": start_us, "first_end": first_end, "horizon": horizon, "as_of": as_of_us,
              "window": window_us, "span": span}
    categorised = breakdown == "category" or any(step.category is not None for step in definition.steps)
    with product_state.snapshot(cursor) if categorised or kept else nullcontext():
        # Products' categories (breakdown, step filters) from product_state when as_of is not before its horizon.
        recent = False
        if categorised or kept:
            bounds["folded"], bounds["state_horizon"] = product_state.standing(cursor)
            recent = categorised and as_of_us >= bounds["state_horizon"]
        # Units by the rows' stored person numbers when no two keys share one; else by a hash computed here, checked
        # for units sharing it, and then, if some did, by the keys themselves.
        stored = kept and not person_hashes.clash_possible(cursor, bounds["folded"])
        # Persons entering by a plain view, cart or inquiry: counted from the KPI state's day sets (kpi_state.py).
        first = definition.steps[0]
        present = (stored and breakdown is None and step_count > 1 and definition.unit == "person"
                   and first.type in kpi_state.PRESENCE_TYPES
                   and (first.product_id, first.category, first.source) == (None, None, None))
        if present:
            _, capacity, state_zone = kpi_state.standing(cursor)
            bounds["w0"], bounds["w1"] = kpis.whole_days(start_us, first_end, as_of_us, state_zone)
            bounds["last_id"] = capacity - 1
            # Only when some rows lie outside the whole days or are not folded is person_ids probed by key.
            loose = cursor.execute(f"SELECT EXISTS ({_LOOSE_ENTRANTS})", {
                "type0": first.type, **{name: bounds[name] for name in ("start", "first_end", "w0", "w1", "folded")}
            }).fetchone()[0]  # type: ignore[index]
            present_sql = _present_entrants(loose=bool(loose))
        # Step 2's chain starts from ``prior_views`` (its persons' latest views) when step 1 is every view.
        second = definition.steps[1] if step_count > 1 else None
        prior = (stored and definition.unit == "person" and second is not None and second.type != "order"
                 and (first.type, first.product_id, first.category, first.source) == ("view", None, None, None))
        # Whether some of step 2's rows are loose (below): else the query reads no view but those of ``recent``.
        loose = prior and _loose_prior(cursor, bounds["folded"], second.type, first_end, horizon)  # type: ignore[union-attr]
        for numbering in ("stored",) if stored else ("hashed", "keys"):
            sql, params = _query(definition, breakdown, numbering=numbering, recent=recent,
                                 present=present_sql if present and numbering == "stored" else None,
                                 prior=("loose" if loose else "trusted") if prior and numbering == "stored" else None)
            params.update(bounds)
            used = set(re.findall(r"\$(\w+)", sql))  # DuckDB refuses parameters a statement does not use
            rows = cursor.execute(sql, {name: value for name, value in params.items() if name in used}).fetchall()
            if not any(row[-1] for row in rows):  # no two units shared a number
                break
    groups: dict[str | None, _Group] = {}
    for kind, group, level, count, converting, value, scaled, _ in rows:
        figures = groups.setdefault(group, _Group(step_count))
        if kind == 0:
            figures.units[level - 1] = count
            figures.converting[level - 1] = converting
            figures.value += int(value or 0)
            figures.scaled += scaled
        else:  # a middle value of the times to convert, in microseconds
            figures.middle.append(value)
    return _result(definition, step_count, groups, breakdown is not None)


def _loose_prior(cursor: duckdb.DuckDBPyConnection, folded: int, second: str, first_end: int, horizon: int) -> bool:
    """Whether ``prior_views`` may not hold the latest start of some step-2 row: a view or a step-2 event applied
    since the fold, or a step-2 event after the range whose latest view is after the range too (not in range, but
    an earlier one may be). In the common case (all folded, the range ending at as_of) none: then the query reads
    no view but those of ``recent`` (at 10M: ~60 ms of scans less)."""
    sql = "SELECT EXISTS (SELECT 1 FROM events WHERE applied > $folded AND type IN ('view', $second))"
    params = {"folded": folded, "second": second}
    if horizon > first_end:  # pv <= t: rows with pv >= first_end lie in [first_end, horizon)
        sql += (" OR EXISTS (SELECT 1 FROM prior_views WHERE type = $second AND t >= $first_end AND t < $horizon"
                " AND pv >= $first_end)")
        params |= {"first_end": first_end, "horizon": horizon}
    return bool(cursor.execute(sql, params).fetchone()[0])  # type: ignore[index]


def handles(definition: FunnelDefinition) -> bool:
    """Whether no event can match two of the definition's steps (then the SQL path is exact)."""
    steps = definition.steps
    return all(
        _disjoint(steps[i], steps[j], definition.unit)
        for i in range(len(steps))
        for j in range(i + 1, len(steps))
    )


def _disjoint(one: FunnelStep, other: FunnelStep, unit: Unit) -> bool:
    """Whether no event can match both steps, whatever the facts."""
    if one.type != other.type:
        return True
    if one.source is not None and other.source is not None and one.source != other.source:
        return True
    # An event is about one product, except an order of a person, about every product of its lines.
    if unit == "product" or one.type != "order":
        for field in ("product_id", "category"):
            mine, theirs = getattr(one, field), getattr(other, field)
            if mine is not None and theirs is not None and mine != theirs:
                return True
    return False


class _Group:
    """What one answer (the whole, or one breakdown value) gathers from the query's rows."""

    def __init__(self, step_count: int) -> None:
        self.units = [0] * step_count  # units whose level is j + 1
        self.converting = [0] * step_count
        self.value = 0  # cents
        # Converted units whose order amount has cents (a total, or lines): the reference's sum of Decimals
        # then has two decimals; an order with neither is worth Decimal(0), which leaves the sum as it is.
        self.scaled = 0
        self.middle: list[int] = []


def _result(
    definition: FunnelDefinition, step_count: int, groups: dict[str | None, _Group], with_breakdown: bool
) -> FunnelResult:
    whole = _summary(definition, step_count, groups.get(None, _Group(step_count)))
    if not with_breakdown:
        return whole
    values = sorted(value for value in groups if value is not None)
    parts = {value: _summary(definition, step_count, groups[value]) for value in values}
    return FunnelResult(**{**whole.__dict__, "breakdown": parts})


def _summary(definition: FunnelDefinition, step_count: int, group: _Group) -> FunnelResult:
    counts = tuple(sum(group.units[level:]) for level in range(step_count))
    converted = counts[-1]
    middle = sorted(group.middle)
    return FunnelResult(
        counts=counts,
        conversion=tuple(ratio(count, counts[0]) for count in counts),
        step_conversion=(None, *(ratio(counts[j], counts[j - 1]) for j in range(1, step_count))),
        in_progress=tuple(group.converting),
        # The reference takes the median of timedelta.total_seconds(), i.e. microseconds / 10**6.
        median_seconds_to_convert=median(micros / 10**6 for micros in middle) if converted else None,
        converted_value=(
            (Decimal(group.value).scaleb(-2) if group.scaled else Decimal(0))
            if definition.steps[-1].type == "order"
            else None
        ),
    )


def _query(
    definition: FunnelDefinition, breakdown: Breakdown | None, *, numbering: str, recent: bool,
    present: str | None = None, prior: str | None = None,
) -> tuple[str, dict[str, Any]]:
    steps = definition.steps
    step_count = len(steps)
    unit = _UnitColumns(definition.unit, numbering)
    hashed = unit.hashed
    # Without a breakdown, a unit that never reached step 2 counts in two figures only (entrants, and level 1
    # converting): those come from one grouping of the step-1 rows, and chains are followed only for the units
    # with a step-2 event (at 10M events, a few thousand of the 2M per-product entrants). With a breakdown every
    # entrant's entry is needed: all of them are grouped. (Keys and computed hashes group every entrant: that is
    # where the computed hash's check looks.)
    restricted = numbering == "stored" and breakdown is None and step_count > 1
    keys = unit.keys
    key_list = ", ".join(keys)
    params: dict[str, Any] = {"steps": step_count}
    ctes: list[str] = []

    def cols(alias: str) -> str:
        return ", ".join(f"{alias}.{key}" for key in keys)

    def on(left: str, right: str) -> str:
        return " AND ".join(f"{left}.{key} = {right}.{key}" for key in keys)

    if breakdown == "category" or any(step.category is not None for step in steps):
        ctes.append(product_state.latest_categories() if recent else _CATEGORIES)
    # Per unit, from its step-1 events in range: the latest start, the first one (k = 1), the entry (breakdown);
    # for units numbered by a hash, their keys (the one pair of them, unless two units shared the hash).
    first_columns = ["max(t) AS s", f"{unit.mixed()} AS clash"]
    if step_count == 1:
        first_columns.append("min(t) AS t0")
    first_columns += [f"min({name}) AS {name}" for name in unit.identity]
    # The entry: the unit's first step-1 event in range, ties by event_id; of it, what the breakdown needs.
    entry_columns: tuple[str, ...] = ()
    if breakdown == "source":
        entry_columns = ("src",)
    elif breakdown == "category" and definition.unit == "person":
        # An order is about its lines' products (its category is its first line's), another event its own.
        entry_columns = ("eid",) if steps[0].type == "order" else ("prod",)
    by_entry = "struct_pack(t := t, eid := eid)"
    for name in entry_columns:
        # (arg_min skips a NULL argument: a product, which may be missing, goes in a struct.)
        first_columns.append(
            f"arg_min(struct_pack(p := prod), {by_entry}).p AS prod" if name == "prod"
            else f"arg_min({name}, {by_entry}) AS {name}"
        )
    # s{j}: the events matching step j + 1; c{j}: those that chains reach, each with the latest start L of a
    # chain reaching it (and whether it met another unit's chain under one hash).
    for index, step in enumerate(steps):
        # The entry is the first step's event (breakdown), the completing one the last step's (converted_value).
        extra: tuple[str, ...] = ("eid", *entry_columns) if index == 0 and entry_columns else ()
        if index == step_count - 1 and step.type == "order":
            extra = (*dict.fromkeys((*extra, "eid")), *(("total",) if definition.unit == "person" else ()))
        if index == 1 and prior == "loose":
            extra = (*extra, "applied")
        ctes += _step(index, step, unit, params, extra)
        if index == 0 and not restricted:
            ctes.append(f"c0 AS (SELECT {key_list}, t FROM s0)")  # each its own start
            ctes.append(f"first AS (SELECT {', '.join((*keys, *first_columns))} FROM s0 GROUP BY {key_list})")
        elif index > 0:
            if index == 1 and restricted:
                # Chains start (each step-1 event its own start) only in the units with a step-2 event. Per product
                # those are few (at 10M events, 3,000 step-1 rows of 2M): then step 2's rows are cut to their units
                # before the ASOF JOIN sorts them (0.9 s -> 0.1 s). Per person most entrants have one: the ASOF JOIN
                # against every step-1 row costs less than the cut (at 10M: 367 ms against 453 ms with it).
                if unit.product:
                    ctes.append(f"c0 AS (SELECT {cols('a')}, a.t FROM s0 a SEMI JOIN s1 b ON {on('a', 'b')})")
                    ctes.append(f"s1_going AS (SELECT b.* FROM s1 b SEMI JOIN c0 a ON {on('b', 'a')})")
                elif prior != "trusted":  # (trusted: step 2's starts are all read from prior_views)
                    ctes.append(f"c0 AS (SELECT {key_list}, t FROM s0)")
            start = "t" if index == 1 else "l"
            later_rows = "s1_going" if index == 1 and restricted and unit.product else f"s{index}"
            # From step 3 on, the previous step's chains are cut to the units of this step's rows before the ASOF
            # JOIN sorts them (at 10M: 390,000 chained carts, of which those of the 20,000 persons with an inquiry;
            # the ASOF JOIN 49 -> 28 ms). At step 2 the cut would read the step-1 rows twice: see above.
            earlier = (f"c{index - 1}" if index == 1
                       else f"(SELECT a.* FROM c{index - 1} a SEMI JOIN {later_rows} b ON {on('a', 'b')})")
            if index == 1 and prior:
                # A step-2 event's latest start is its person's latest view at or before it, when that lies in
                # range (if it lies before, so does every earlier view): from ``prior_views``, which holds it for
                # the folded rows; there it is trusted but for the persons with a view applied since the fold, or
                # with a step-2 event whose latest view lies after the range (which ends before that event). Their
                # rows, and those not folded yet, are joined to the range's views of their persons.
                # (A filtered step 2: the table's rows of its events; equal (ph, t) rows have the same start.)
                matching = ("\n      AND (p.ph, p.t) IN (SELECT (ph, t) FROM s1)"
                            if (steps[1].source, steps[1].product_id, steps[1].category) != (None, None, None) else "")
                trusted = f"""SELECT p.ph, p.t, p.pv AS l, FALSE AS clash FROM prior_views p
    WHERE p.type = $type1 AND p.t >= $start AND p.t < $horizon
      AND p.pv >= $start AND p.pv < $first_end AND p.t <= p.pv + $window{matching}"""
                if prior == "trusted":  # no row is loose (``_loose_prior``)
                    ctes.append(f"c1 AS (\n    {trusted}\n)")
                    continue
                ctes.append(f"""loose_persons AS (
    {prior_views.DIRTY}
    UNION
    SELECT ph FROM prior_views WHERE type = $type1 AND t >= $start AND t < $horizon AND pv >= $first_end
),
loose1 AS MATERIALIZED (
    SELECT * FROM s1 WHERE applied > $folded OR ph IN (SELECT ph FROM loose_persons)
),
c1 AS (
    {trusted}
      AND p.ph NOT IN (SELECT ph FROM loose_persons)
    UNION ALL
    SELECT b.ph, b.t, a.t AS l, b.clash
    FROM loose1 b ASOF JOIN (SELECT * FROM c0 WHERE ph IN (SELECT ph FROM loose1)) a ON a.ph = b.ph AND b.t >= a.t
    WHERE b.t <= a.t + $window
)""")
                continue
            ctes.append(
                f"""c{index} AS (
    SELECT {cols("b")}, b.t, a.{start} AS l, b.clash
    FROM {later_rows} b ASOF JOIN {earlier} a ON {on("a", "b")} AND b.t >= a.t
    WHERE b.t <= a.{start} + $window
)"""
            )

    # How far chains got per unit: the furthest step with its latest start (packed into one BIGINT), the fastest
    # conversion, the earliest completion.
    if step_count > 1:
        reached = [
            f"SELECT {key_list}, {index + 1} AS level, l, NULL::BIGINT AS fast, NULL::BIGINT AS done, clash "
            f"FROM c{index}"
            for index in range(1, step_count - 1)
        ]
        reached.append(
            f"SELECT {key_list}, {step_count} AS level, l, t - l AS fast, t AS done, clash FROM c{step_count - 1}"
        )
        ctes.append(
            f"""later AS (
    SELECT {key_list}, max(level::BIGINT * $span + (l - $start)) AS packed, min(fast) AS fast,
           min(done) AS done, bool_or(clash) AS clash
    FROM (
        {(chr(10) + "        UNION ALL ").join(reached)}
    )
    GROUP BY {key_list}
)"""
        )
        level = "coalesce(x.packed // $span, 1)"
        latest = "coalesce($start + x.packed % $span, f.s)"
        fast, done, clash = "x.fast", "x.done", "f.clash OR coalesce(x.clash, FALSE)"
        joins = f"\n    LEFT JOIN later x ON {on('x', 'f')}"
    else:
        level, latest, fast, done, clash, joins = "1", "f.s", "0::BIGINT", "f.t0", "f.clash", ""

    # What the breakdown groups by: the unit's value on its entry.
    group = "NULL::VARCHAR"
    if breakdown == "source":
        group = "f.src"
    elif breakdown == "category":
        if definition.unit == "product":
            about = "f.pid"
        elif steps[0].type == "order":
            # An order is about its lines' products; its category is its first line's.
            ctes.append(
                """firsts AS (
    SELECT i.event_id, arg_min(i.product_id, i.line) AS prod
    FROM order_items i SEMI JOIN first f ON f.eid = i.event_id GROUP BY i.event_id
)"""
            )
            joins += "\n    LEFT JOIN firsts p ON p.event_id = f.eid"
            about = "p.prod"
        else:
            about = "f.prod"
        joins += f"\n    LEFT JOIN categories k ON k.product_id = {about}"
        params["none"] = UNKNOWN_CATEGORY
        group = "coalesce(k.category, $none)"
    pid = ", f.pid" if definition.unit == "product" and hashed else ""
    if restricted:
        # Units that went past step 1, each marked ``entered`` when it has a step-1 event within W of as_of (in
        # ``recent``: had it stayed at level 1, it would be converting there); the entrants' count and level-1
        # figures follow from them, the entrants and ``recent``. ``recent`` comes from the rows of that stretch
        # when the KPI state counts the entrants (a scan of step 1's type from as_of - W on: the zone maps of
        # occurred_us skip the rest), else from the one grouping of the step-1 rows that counts them.
        ctes.append(
            (f"""recent AS MATERIALIZED (
    SELECT DISTINCT ph FROM events
    WHERE type = $type0 AND occurred_us > $as_of - $window AND occurred_us >= $start AND occurred_us < $first_end
),
{present}""" if present else f"""latest_entry AS MATERIALIZED (SELECT {key_list}, max(t) AS s FROM s0 GROUP BY {key_list}),
recent AS (SELECT {key_list} FROM latest_entry WHERE s + $window > $as_of),
entrants AS (SELECT count(*) AS n, (SELECT count(*) FROM recent) AS converting FROM latest_entry)""") + f""",
units AS MATERIALIZED (
    SELECT {cols("x")}, x.packed // $span AS level, $start + x.packed % $span AS s, x.fast, x.done,
           NULL::VARCHAR AS grp, FALSE AS clash, r.entered
    FROM later x LEFT JOIN (SELECT {key_list}, TRUE AS entered FROM recent) r ON {on('r', 'x')}
)"""
        )
    else:
        ctes.append(
            f"""units AS MATERIALIZED (
    SELECT {cols("f")}{pid}, {level} AS level, {latest} AS s, {fast} AS fast, {done} AS done, {group} AS grp,
           {clash} AS clash
    FROM first f{joins}
)"""
    )

    # converted_value: each converted unit's completing event, its last-step event at its earliest completion
    # with the smallest event_id, and what it is worth.
    value, worth_join = "NULL::HUGEINT", ""
    if steps[-1].type == "order":
        ctes.append(
            f"""completing AS (
    SELECT {cols("u")}{", u.pid" if definition.unit == "product" and hashed else ""}, min(b.eid) AS eid
    FROM units u JOIN s{step_count - 1} b ON {on("u", "b")} AND b.t = u.done
    WHERE u.level = $steps GROUP BY ALL
)"""
        )
        if definition.unit == "product":
            ctes.append(
                f"""worth AS (
    SELECT {cols("c")}, sum(i.quantity::HUGEINT * i.unit_price_cents) AS cents
    FROM completing c JOIN order_items i ON i.event_id = c.eid AND i.product_id = c.pid GROUP BY {cols("c")}
)"""
            )
        else:
            ctes.append(
                f"""lines AS (
    SELECT i.event_id, sum(i.quantity::HUGEINT * i.unit_price_cents) AS cents
    FROM order_items i SEMI JOIN completing c ON c.eid = i.event_id GROUP BY ALL
),
worth AS (
    SELECT {cols("c")}, coalesce(o.total, l.cents) AS cents
    FROM completing c JOIN s{step_count - 1} o ON o.eid = c.eid LEFT JOIN lines l ON l.event_id = c.eid
)"""
            )
        value, worth_join = "w.cents", f"LEFT JOIN worth w ON {on('w', 'u')}"

    by_group = breakdown is not None
    ctes.append(
        f"""valued AS (
    SELECT u.level, u.s, u.fast, u.grp, u.clash, {value} AS cents FROM units u {worth_join}
),
middles AS (
    SELECT g, fast, row_number() OVER (PARTITION BY g ORDER BY fast) AS r, count(*) OVER (PARTITION BY g) AS n
    FROM (
        SELECT NULL::VARCHAR AS g, fast FROM valued WHERE level = $steps
        {"UNION ALL SELECT grp, fast FROM valued WHERE level = $steps" if by_group else ""}
    )
)"""
    )
    grouping = "GROUPING SETS ((level), (grp, level))" if by_group else "level"
    select = f"""
SELECT 0 AS kind, {"CASE WHEN grouping(grp) = 0 THEN grp END" if by_group else "NULL"} AS g, level,
       count(*) AS units, count(*) FILTER (WHERE level < $steps AND s + $window > $as_of) AS converting,
       sum(cents) AS value, count(cents) AS scaled, bool_or(clash) AS clash
FROM valued GROUP BY {grouping}
UNION ALL
SELECT 1, g, NULL, NULL, NULL, fast, NULL, FALSE FROM middles WHERE r = (n + 1) // 2 OR r = n // 2 + 1
"""
    if restricted:  # the level-1 units: the entrants not in ``units``
        select += """UNION ALL
SELECT 0, NULL, 1, e.n - u.n, e.converting - u.converting, NULL, 0, FALSE
FROM entrants e, (SELECT count(*) AS n, count(*) FILTER (WHERE entered) AS converting FROM units) u
"""
    return "WITH " + ",\n".join(ctes) + select, params


# The entrants of a person funnel whose step 1 is a plain view, cart or inquiry ($type0): the persons with such an
# event in [$start, $first_end), as the KPIs count them (kpis.py): the whole days [$w0, $w1) (of the state's zone,
# at or before as_of) from ``presence``, the rest of the range and the rows not folded yet from the rows, by person
# id, or by key for a person without one (in no day's set). Converting at level 1 needs a step-1 event within W of
# as_of: those persons are counted from the rows of that last stretch.
_LOOSE_ENTRANTS = """
    SELECT person_key FROM events
    WHERE type = $type0 AND occurred_us >= $start AND occurred_us < $first_end AND (occurred_us < $w0 OR occurred_us >= $w1)
    UNION ALL
    SELECT person_key FROM events WHERE applied > $folded AND type = $type0 AND occurred_us >= $w0 AND occurred_us < $w1"""


def _present_entrants(*, loose: bool) -> str:
    """CTE ``entrants`` (n, converting) from the KPI state; ``loose``: some entrants' rows are not in its day sets."""
    unkept = f"""entrants_unkept AS (
    SELECT {kpi_state.ROW_PERSONS}
    FROM ({_LOOSE_ENTRANTS}) l LEFT JOIN person_ids i ON i.person_key = l.person_key
)""" if loose else "entrants_unkept AS (SELECT NULL::BIT AS bits, 0 AS newcomers)"
    return f"""entrants_kept AS (
    SELECT bit_or(bits) AS bits FROM presence WHERE type = $type0 AND day_start >= $w0 AND day_start < $w1
),
{unkept},
entrants AS (
    SELECT {kpi_state.UNION_COUNT} AS n,
           (SELECT count(*) FROM recent) AS converting
    FROM entrants_kept k, entrants_unkept u
)"""


class _UnitColumns:
    """How step rows name their unit (``numbering``): by the person number the copy stores with each row (``ph``,
    with product_id for unit = product; only when the registry shows no two keys share one); by its keys
    (person_key, and product_id); or by a hash computed here. Under a computed hash, two units could share a
    number; so each unit's keys are kept with its step-1 events, and a later step's event is told whether its keys
    are those of the entrant with its number (``clash``)."""

    def __init__(self, unit: Unit, numbering: str) -> None:
        self.product = unit == "product"
        self.stored = numbering == "stored"
        self.hashed = numbering == "hashed"
        self.names: tuple[str, ...] = ("pk", "pid") if self.product else ("pk",)
        self.keys: tuple[str, ...] = (
            (("ph", "pid") if self.product else ("ph",)) if self.stored else ("h",) if self.hashed else self.names)
        self.identity: tuple[str, ...] = self.names if self.hashed else ()

    def columns(self, alias: str, index: int) -> tuple[str, str, list[str]]:
        """The unit's columns of a step's row ``alias`` (with ``clash`` after step 1), the join that numbering
        needs, and the conditions that keep only the units a chain reached before this step (entrants, then
        c{index - 1}; for a stored number, step 2's rows are not filtered: the ASOF JOIN drops the others)."""
        person, product = f"{alias}.person_key", f"{alias}.product_id" if self.product else None
        values = [person] if product is None else [person, product]
        if self.stored:
            named = [f"{alias}.ph AS ph", *([f"{product} AS pid"] if product else [])]
            if index == 0:
                return ", ".join(named), "", []
            previous = f"c{index - 1}"
            reached = [] if index == 1 else [
                f"({alias}.ph, {product}) IN (SELECT (ph, pid) FROM {previous})" if product
                else f"{alias}.ph IN (SELECT ph FROM {previous})"]
            return ", ".join((*named, "FALSE AS clash")), "", reached
        if not self.hashed:
            named = [f"{value} AS {name}" for value, name in zip(values, self.names, strict=True)]
            if index == 0:
                return ", ".join(named), "", []
            previous = "first" if index == 1 else f"c{index - 1}"
            reached = (
                f"({', '.join(values)}) IN (SELECT ({', '.join(self.names)}) FROM {previous})"
                if self.product else f"{person} IN (SELECT pk FROM {previous})"
            )
            return ", ".join((*named, "FALSE AS clash")), "", [reached]
        number = _HASH.format(", ".join(values))
        if index == 0:
            named = [f"{value} AS {name}" for value, name in zip(values, self.names, strict=True)]
            return ", ".join((f"{number} AS h", *named)), "", []
        # Joined to the entrant of its number; a later event of other keys under that number is a clash.
        clash = " OR ".join(f"{value} <> f.{name}" for value, name in zip(values, self.names, strict=True))
        reached = [] if index == 1 else [f"{number} IN (SELECT h FROM c{index - 1})"]
        return f"{number} AS h, {clash} AS clash", f" JOIN first f ON f.h = {number}", reached

    def persons_reached(self, index: int) -> str:
        """For the order events a later step considers: whether their person has a unit a chain reached."""
        if self.stored:
            return f"ph IN (SELECT ph FROM {'s0' if index == 1 else f'c{index - 1}'})"
        previous = "first" if index == 1 else f"c{index - 1}"
        if self.hashed and not self.product:
            return f"{_HASH.format('person_key')} IN (SELECT h FROM {previous})"
        if self.hashed:  # chains of product units numbered by a hash hold the number alone; entrants hold the keys
            previous = "first"
        return f"person_key IN (SELECT pk FROM {previous})"

    def mixed(self) -> str:
        """Whether a group of step-1 rows holds rows of different units (possible only under one hash)."""
        if not self.hashed:
            return "FALSE"
        return " OR ".join(f"min({name}) <> max({name})" for name in self.identity)


# Every product's latest carried category up to as_of (ties by event_id; in one event, its own product before its
# order lines, lines in order): first the latest instant each product's category was carried at, then the
# carriers at that instant.
_CATEGORIES = """carried_items AS (
    SELECT i.product_id, i.category, e.occurred_us AS t, e.event_id, i.line
    FROM order_items i JOIN order_events e ON e.event_id = i.event_id
    WHERE e.occurred_us <= $as_of AND i.category IS NOT NULL
),
carried_at AS (
    SELECT product_id, max(t) AS t FROM (
        SELECT product_id, max(occurred_us) AS t FROM events
        WHERE product_id IS NOT NULL AND category IS NOT NULL AND occurred_us <= $as_of GROUP BY product_id
        UNION ALL
        SELECT product_id, t FROM carried_items
    ) GROUP BY product_id
),
categories AS (
    SELECT product_id, arg_max(category, struct_pack(event_id := event_id, line := line)) AS category FROM (
        SELECT e.product_id, e.category, e.event_id, -1 AS line
        FROM events e JOIN carried_at c ON c.product_id = e.product_id AND c.t = e.occurred_us
        WHERE e.category IS NOT NULL AND e.occurred_us >= (SELECT min(t) FROM carried_at)
        UNION ALL
        SELECT i.product_id, i.category, i.event_id, i.line
        FROM carried_items i JOIN carried_at c ON c.product_id = i.product_id AND c.t = i.t
    ) GROUP BY product_id
)"""


def _step(
    index: int, step: FunnelStep, unit: _UnitColumns, params: dict[str, Any], extra: Sequence[str]
) -> list[str]:
    """The events matching one step, in its span: one row per event and unit (person, or person and product),
    with its time and the `extra` columns asked for (eid, src, prod, total); as the CTE s{index}, after the
    ones it needs. A later step keeps only the events of units some chain has reached before it."""
    until = "$first_end" if index == 0 else "$horizon"
    conditions: list[str] = []

    def bind(name: str, value: str) -> str:
        params[f"{name}{index}"] = value
        return f"${name}{index}"

    ctes: list[str] = []
    if step.type == "order":
        # An order step matches each order's counting event alone: its earliest completed event (ties by
        # event_id) among all known, whoever's it is. (order_events: the copy's order events alone.)
        reached = f"\n      AND {unit.persons_reached(index)}" if index > 0 else ""
        # The orders with a completed event in the span of a unit reached, then all their completed events up to
        # the span's end: the first of each (ties by event_id), kept if it lies in the span (else none counts here).
        # (Two scans of order_events; at 10M the third, for the ties at the first instant, was ~20 ms. The first
        # kept is cut to the units reached again: fewer rows only, the later steps' joins drop the others.)
        ctes.append(
            f"""o{index} AS (
    SELECT order_id FROM order_events
    WHERE order_status = 'completed' AND occurred_us >= $start AND occurred_us < {until}{reached}
),
k{index} AS (
    SELECT * FROM (
        {first_completed(
            f"e.event_id, e.order_id, e.person_key, e.occurred_us, e.source, e.total_cents{', e.ph' if unit.stored else ''}",
            f"e.occurred_us < {until} AND e.order_id IN (SELECT order_id FROM o{index})")}
    ) WHERE occurred_us >= $start{reached}
)"""
        )
        if unit.product:
            source = f"""(SELECT DISTINCT c.person_key, i.product_id, c.occurred_us, c.event_id, c.source, c.total_cents{
                ", c.ph" if unit.stored else ""}
        FROM k{index} c JOIN order_items i ON i.event_id = c.event_id) o"""
            about: str | None = "o.product_id"
        else:
            source, about = f"k{index} o", None
    else:
        source, about = "events o", "o.product_id"
        conditions += [f"o.type = {bind('type', step.type)}", "o.occurred_us >= $start", f"o.occurred_us < {until}"]
        if unit.product:
            conditions.append("o.product_id IS NOT NULL")
    columns, join, reached_units = unit.columns("o", index)
    conditions += reached_units
    if step.source is not None:
        conditions.append(f"o.source = {bind('source', step.source)}")
    if step.product_id is not None:
        wanted = bind("product", step.product_id)
        conditions.append(
            f"{about} = {wanted}" if about is not None
            else f"o.event_id IN (SELECT event_id FROM order_items WHERE product_id = {wanted})"
        )
    if step.category is not None:
        wanted = bind("category", step.category)
        of_category = f"(SELECT product_id FROM categories WHERE category = {wanted})"
        conditions.append(
            f"{about} IN {of_category}" if about is not None
            else f"o.event_id IN (SELECT event_id FROM order_items WHERE product_id IN {of_category})"
        )
    # prod: the product a breakdown by category looks at (an order of a person: its first line's, found later).
    more = {"eid": "o.event_id AS eid", "src": "o.source AS src", "prod": f"{about or 'NULL::VARCHAR'} AS prod",
            "total": "o.total_cents AS total", "applied": "o.applied AS applied"}
    columns = ", ".join((columns, "o.occurred_us AS t", *(more[name] for name in extra)))
    ctes.append(
        f"s{index} AS (\n    SELECT {columns}\n    FROM {source}{join}"
        + ("\n    WHERE " + "\n      AND ".join(conditions) if conditions else "")
        + "\n)"
    )
    return ctes


__all__: Sequence[str] = ("funnel_result_sql", "handles")
