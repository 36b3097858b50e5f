"""Rule segments, stored membership and the outbox of membership changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from itertools import product
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    String,
    Table,
    Text,
    and_,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Select, SelectBase

from libs.common.columns import primary, required
from libs.common.db import BulkRows, bytewise, chunks, insert, wide_at_least
from libs.common.events import epoch_micros, from_epoch_micros
from services.segmentation.adapters.facts import _order_sums
from services.segmentation.adapters.tables import (
    counted_orders,
    customer_segments,
    membership_changes,
    metadata,
    profiles,
    removed_segments,
    segment_changes,
    segments,
)
from services.segmentation.domain.customers import FiguresAt, LifecycleStage, MembershipTier
from services.segmentation.domain.rfm import SCORES, RfmCuts, rfm_segment
from services.segmentation.domain.rounds import DAY_US, Round
from services.segmentation.domain.rules import STORED_RULE_LIMITS, parse_rule
from services.segmentation.segments import (
    BUILTIN_BY_ID,
    SegmentDefinition,
    SegmentKind,
    builtin_ids,
    membership_ids,
    membership_key,
)

_MEMBERSHIP_LOCK = 7461003  # PostgreSQL advisory lock key of this service's membership changes


async def lock_membership(connection: AsyncConnection) -> None:
    """Serialize membership evaluations and erasures until the transaction ends (SQLite: BEGIN IMMEDIATE does)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MEMBERSHIP_LOCK})


class DuplicateSegmentName(ValueError):
    """Another segment already has this name."""


def _definition(row: Any) -> SegmentDefinition:
    # Stored rules passed parse_rule on creation; parsing again rebuilds the immutable tree.
    raw_rule = orjson.loads(row.rule)
    return SegmentDefinition(segment_id=row.segment_id, name=row.name, kind=SegmentKind.RULE,
                             rule=parse_rule(raw_rule, STORED_RULE_LIMITS), created_at=from_epoch_micros(row.created_us),
                             rule_json=raw_rule)


async def add_rule_segment(connection: AsyncConnection, segment: SegmentDefinition) -> None:
    """Store a validated rule segment; DuplicateSegmentName if the name is taken."""
    assert segment.created_at is not None
    try:
        async with connection.begin_nested():
            await connection.execute(segments.insert().values(
                segment_id=segment.segment_id, name=segment.name, rule=orjson.dumps(segment.rule_json).decode(),
                created_us=epoch_micros(segment.created_at),
            ))
    except IntegrityError:
        raise DuplicateSegmentName(segment.name) from None


async def rule_segment_count(connection: AsyncConnection) -> int:
    return (await connection.execute(select(func.count()).select_from(segments))).scalar_one()


async def delete_rule_segment(connection: AsyncConnection, segment_id: str) -> list[tuple[str, str, str]] | None:
    """Delete a rule segment; None if there is none with this id, else its members' ``(person, new membership key
    without the segment, stored key)``, for the caller to store and queue. Its name is kept (``removed_segments``)
    until its exit records are published."""
    name = (await connection.execute(select(segments.c.name).where(segments.c.segment_id == segment_id))).scalar()
    if name is None:
        return None
    await connection.execute(insert(connection, removed_segments).values(segment_id=segment_id, name=name)
                             .on_conflict_do_nothing())
    await connection.execute(delete(segments).where(segments.c.segment_id == segment_id))
    # Ids hold no spaces (membership_key joins them with spaces); the substring test only narrows the scan.
    rows = await connection.execute(
        select(customer_segments.c.person_key, customer_segments.c.segment_ids)
        .where(customer_segments.c.segment_ids.contains(segment_id, autoescape=True)))
    changes = []
    for person, key in rows:
        ids = membership_ids(key)
        if segment_id in ids:
            changes.append((person, membership_key(ids - {segment_id}), key))
    return changes


async def rule_segments(connection: AsyncConnection) -> list[SegmentDefinition]:
    """Every rule segment, oldest first."""
    rows = await connection.execute(select(segments).order_by(segments.c.created_us, segments.c.segment_id))
    return [_definition(row) for row in rows]


async def rule_segment(connection: AsyncConnection, segment_id: str) -> SegmentDefinition | None:
    row = (await connection.execute(select(segments).where(segments.c.segment_id == segment_id))).first()
    return None if row is None else _definition(row)


async def member_counts(connection: AsyncConnection) -> dict[str, int]:
    """Stored (last published) member count per segment."""
    query = select(customer_segments.c.segment_ids, func.count()).group_by(customer_segments.c.segment_ids)
    counts: Counter[str] = Counter()
    for key, persons in await connection.execute(query):
        for segment_id in membership_ids(key):
            counts[segment_id] += persons
    return dict(counts)


_MEMBERSHIP_ROWS = BulkRows(customer_segments, ("person_key", "segment_ids"))
_QUEUED_ROWS = BulkRows(membership_changes, ("evaluation", "as_of_us", "person_key", "segment_ids_before",
                                             "segment_ids_after"))
# Rows per statement of a bulk write (one bound array per column).
_BULK = 50_000
# Pages of a segment's stored members merge the person ranges of the keys holding it (stored_members), per dialect.
STORED_MEMBERS_INDEX = {
    dialect: f"CREATE INDEX IF NOT EXISTS ix_customer_segments_key_person ON customer_segments (segment_ids, {person})"
    for dialect, person in (("postgresql", 'person_key COLLATE "C"'), ("sqlite", "person_key"))}
# customer_segments' indexes on PostgreSQL (its primary key, migration 7's index), as a first evaluation drops and
# builds them again.
_MEMBERSHIP_INDEXES_DROP = ("DROP INDEX ix_customer_segments_key_person",
                            "ALTER TABLE customer_segments DROP CONSTRAINT customer_segments_pkey")
_MEMBERSHIP_INDEXES_CREATE = ("ALTER TABLE customer_segments ADD CONSTRAINT customer_segments_pkey "
                              "PRIMARY KEY (person_key)",
                              STORED_MEMBERS_INDEX["postgresql"])


async def store_memberships(connection: AsyncConnection, evaluation: int, as_of_us: int,
                            changes: Sequence[tuple[str, str, str | None]]) -> int:
    """Store persons' new membership keys ``(person, key, stored key or None)`` (key ``""``: in no segment any more)
    and queue one outbox row per person (its records are rendered when published, membership.py). Returns how
    many."""
    dialect = connection.dialect.name
    # In person order: the indexes on person keys grow mostly at one end.
    ordered = sorted(changes)
    kept = [(person, key) for person, key, _ in ordered if key]
    if kept:
        statement = _MEMBERSHIP_ROWS.insert(dialect)
        statement = statement.on_conflict_do_update(index_elements=["person_key"],
                                                    set_={"segment_ids": statement.excluded.segment_ids})
        for start in range(0, len(kept), _BULK):
            await connection.execute(statement, _MEMBERSHIP_ROWS.params(dialect, kept[start:start + _BULK]))
    for batch in chunks(person for person, key, _ in ordered if not key):
        await connection.execute(delete(customer_segments).where(customer_segments.c.person_key.in_(batch)))
    rows = [(evaluation, as_of_us, person, stored or "", key) for person, key, stored in ordered]
    statement = _QUEUED_ROWS.insert(dialect)
    for start in range(0, len(rows), _BULK):
        await connection.execute(statement, _QUEUED_ROWS.params(dialect, rows[start:start + _BULK]))
    return len(rows)


async def store_everyones_builtin_changes(connection: AsyncConnection, figures_at: FiguresAt, cuts: RfmCuts,
                                          evaluation: int) -> tuple[int, int]:
    """Everyone's built-in segments at as_of decided in the database, compared with the stored membership, stored
    and queued there (``store_memberships`` of ``builtin_membership_changes`` of everyone, without a row passing
    through Python: a first evaluation changes every customer).

    Returns (customers evaluated, persons whose membership changed)."""
    as_of_us = figures_at.as_of_us
    queued = membership_changes.c
    # Evaluations hold the membership lock: the rows after the last seq now are this evaluation's.
    last = (await connection.execute(select(func.coalesce(func.max(queued.seq), 0)))).scalar_one()
    changed = _everyones_changes(figures_at, cuts).subquery("changed")
    queued_rows = await connection.execute(membership_changes.insert().from_select(
        ["evaluation", "as_of_us", "person_key", "segment_ids_before", "segment_ids_after"],
        select(literal(evaluation, BigInteger), literal(as_of_us, BigInteger), changed.c.person_key,
               changed.c.stored, changed.c.segment_ids)))
    this_evaluation = and_(queued.seq > last, queued.evaluation == evaluation)
    # Without a stored row before (a first evaluation: every customer) a plain insert, in person order while the
    # primary key is there (it grows at one end); the lock keeps anyone else from storing one meanwhile.
    first = (connection.dialect.name == "postgresql"
             and (await connection.execute(select(customer_segments.c.person_key).limit(1))).first() is None)
    if first:
        # Into an empty table: its indexes are built once afterwards, not grown a row at a time (a million rows: the
        # (segment_ids, person) index takes them at scattered places). Dropped and built in this transaction, so a
        # crash leaves them as they were; readers of the table wait for the commit meanwhile.
        for statement in _MEMBERSHIP_INDEXES_DROP:
            await connection.execute(text(statement))
    new_members = (select(queued.person_key, queued.segment_ids_after)
                   .where(this_evaluation, queued.segment_ids_before == "", queued.segment_ids_after != ""))
    await connection.execute(customer_segments.insert().from_select(
        ["person_key", "segment_ids"], new_members if first else new_members.order_by(queued.person_key)))
    if first:
        # Both sorts of a million keys in memory (the default 64 MB spills): 5.5 s instead of 6.5 to 6.9 s.
        await connection.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for statement in _MEMBERSHIP_INDEXES_CREATE:
            await connection.execute(text(statement))
    await connection.execute(
        update(customer_segments).values(segment_ids=queued.segment_ids_after)
        .where(customer_segments.c.person_key == queued.person_key, this_evaluation,
               queued.segment_ids_before != "", queued.segment_ids_after != ""))
    await connection.execute(delete(customer_segments).where(customer_segments.c.person_key.in_(
        select(queued.person_key).where(this_evaluation, queued.segment_ids_after == ""))))
    evaluated = (await connection.execute(
        select(func.count()).select_from(profiles).where(profiles.c.first_seen_us <= as_of_us))).scalar_one()
    return evaluated, queued_rows.rowcount


async def queued_changes(connection: AsyncConnection, limit: int) -> list[Any]:
    """The oldest queued outbox rows, locked against other replicas publishing them too."""
    query = select(membership_changes).order_by(membership_changes.c.seq).limit(limit).with_for_update(skip_locked=True)
    return list((await connection.execute(query)).all())


async def forget_changes(connection: AsyncConnection, seqs: Sequence[int]) -> None:
    for start in range(0, len(seqs), 900):
        batch = seqs[start:start + 900]
        await connection.execute(delete(membership_changes).where(membership_changes.c.seq.in_(batch)))


async def forget_removed_segments(connection: AsyncConnection) -> None:
    """Forget the names of removed rule segments once no outbox row is left (one statement: one snapshot, so a
    removal committing meanwhile keeps its name with its rows)."""
    await connection.execute(delete(removed_segments).where(~select(membership_changes.c.seq).exists()))


async def segment_names(connection: AsyncConnection) -> dict[str, SegmentDefinition]:
    """Every segment a queued record can name: built-in, rule, and removed rule segments."""
    names = dict(BUILTIN_BY_ID)
    rows = await connection.execute(select(segments.c.segment_id, segments.c.name)
                                    .union_all(select(removed_segments.c.segment_id, removed_segments.c.name)))
    for segment_id, name in rows:
        names[segment_id] = SegmentDefinition(segment_id=segment_id, name=name, kind=SegmentKind.RULE)
    return names


async def legacy_queued_changes(connection: AsyncConnection, limit: int) -> list[Any]:
    """The oldest records an older version queued as payloads (``segment_changes``), locked like ``queued_changes``."""
    query = (select(segment_changes.c.seq, segment_changes.c.person_key, segment_changes.c.payload)
             .order_by(segment_changes.c.seq).limit(limit).with_for_update(skip_locked=True))
    return list((await connection.execute(query)).all())


async def forget_legacy_changes(connection: AsyncConnection, seqs: Sequence[int]) -> None:
    for start in range(0, len(seqs), 900):
        batch = seqs[start:start + 900]
        await connection.execute(delete(segment_changes).where(segment_changes.c.seq.in_(batch)))


# The last re-evaluation of everyone's built-in segments (one row): what the next one starts from
# (domain/rounds.py). Migration 4 makes erasing a profile forget it: another person's order can count instead.
segment_rounds = Table(
    "segment_rounds", metadata, *primary(scope=String(16)),
    *required(as_of_us=BigInteger, complete_as_of_us=BigInteger, recency_cuts=Text, frequency_cuts=Text),
)
_BUILTIN_ROUND = "builtin"
# Named persons bound as one value (PostgreSQL: an array to unnest; SQLite: a JSON array), however many.
_PERSON_ROWS = BulkRows(profiles, ("person_key",))


async def last_round(connection: AsyncConnection) -> Round | None:
    """The last re-evaluation of everyone's built-in segments, unless something since has made it unusable."""
    row = (await connection.execute(select(segment_rounds).where(segment_rounds.c.scope == _BUILTIN_ROUND))).first()
    if row is None:
        return None
    return Round(row.as_of_us, tuple(orjson.loads(row.recency_cuts)), tuple(orjson.loads(row.frequency_cuts)),
                 row.complete_as_of_us)


async def remember_round(connection: AsyncConnection, round_: Round | None) -> None:
    """Record this round as the last one (None: forget it, the next round looks at everyone)."""
    await connection.execute(delete(segment_rounds))
    if round_ is not None:
        await connection.execute(segment_rounds.insert().values(
            scope=_BUILTIN_ROUND, as_of_us=round_.as_of_us, complete_as_of_us=round_.complete_as_of_us,
            recency_cuts=orjson.dumps(round_.recency_cuts).decode(),
            frequency_cuts=orjson.dumps(round_.frequency_cuts).decode(),
        ))


# When the stored membership was last decided for every customer: the as_of of the last round of everyone
# (built-in and rule segments alike). Unlike segment_rounds it survives erasures and rule segments: stored pages
# of members (GET /v1/segments/{id}/members without as_of) are reported at it.
published_rounds = Table(
    "published_rounds", metadata, *primary(scope=String(16)), *required(as_of_us=BigInteger),
)
_EVERYONE = "everyone"


async def remember_published_round(connection: AsyncConnection, as_of_us: int) -> None:
    """Record that every customer's stored membership was decided at as_of (in this transaction)."""
    await connection.execute(delete(published_rounds))
    await connection.execute(published_rounds.insert().values(scope=_EVERYONE, as_of_us=as_of_us))


async def last_published_round(connection: AsyncConnection) -> int | None:
    """The as_of (epoch micros) of the last round of everyone whose membership is stored, if any."""
    return (await connection.execute(select(published_rounds.c.as_of_us)
                                     .where(published_rounds.c.scope == _EVERYONE))).scalar_one_or_none()


# The distinct stored membership keys, by a walk of the (segment_ids, person_key) index that jumps from one key to
# the next (a few hundred keys among a million rows: a few hundred index probes).
_DISTINCT_KEYS = text("""
    WITH RECURSIVE stored_keys(segment_ids) AS (
        SELECT min(segment_ids) FROM customer_segments
        UNION ALL
        SELECT (SELECT min(segment_ids) FROM customer_segments WHERE segment_ids > stored_keys.segment_ids)
        FROM stored_keys WHERE stored_keys.segment_ids IS NOT NULL
    )
    SELECT segment_ids FROM stored_keys WHERE segment_ids IS NOT NULL""")
# Beyond this many keys holding the segment (many rule segments in many combinations), walk the person index.
_MERGED_KEYS_AT_MOST = 400


async def stored_members(connection: AsyncConnection, segment_id: str, after: str | None, limit: int) -> list[str]:
    """Up to ``limit`` persons whose stored membership holds the segment, by person key after ``after``, from the
    (segment_ids, person_key) index (migration 7): each membership key holding the segment is one ordered range
    of persons, and the page is the first ``limit`` of their merge. Not an evaluation."""
    dialect = connection.dialect.name
    keys = [key for (key,) in await connection.execute(_DISTINCT_KEYS) if segment_id in membership_ids(key)]
    if not keys:
        return []
    person = bytewise(dialect, customer_segments.c.person_key)
    if len(keys) > _MERGED_KEYS_AT_MOST:
        # Ids hold no space: " id " within " key " is membership (autoescape: "_" in "rfm:at_risk" is no wildcard).
        padded = literal(" ") + customer_segments.c.segment_ids + literal(" ")
        query = (select(customer_segments.c.person_key).where(padded.contains(f" {segment_id} ", autoescape=True))
                 .order_by(person).limit(limit))
        if after is not None:
            query = query.where(person > after)
        return list((await connection.execute(query)).scalars())
    parts = []
    for key in keys:
        part = (select(customer_segments.c.person_key.label("person_key"))
                .where(customer_segments.c.segment_ids == key).order_by(person).limit(limit))
        if after is not None:
            part = part.where(person > after)
        parts.append(select(part.subquery().c.person_key))
    merged = union_all(*parts).subquery("members")
    query = select(merged.c.person_key).order_by(bytewise(dialect, merged.c.person_key)).limit(limit)
    return list((await connection.execute(query)).scalars())


def _lifecycle_id(sums: Any, figures_at: FiguresAt) -> Any:
    """The lifecycle segment id of a customer (``FiguresAt.lifecycle``) as a SQL expression over their order sums."""
    new_us, active_us, dormant_us, *_ = figures_at.limits()
    as_of_us = figures_at.as_of_us
    orders, last = func.coalesce(sums.c.orders, 0), sums.c.last_order_us

    def key(stage: LifecycleStage) -> str:
        return builtin_ids(stage, None, None)[0]

    return case(
        (orders == 0, key(LifecycleStage.PROSPECT)),
        (and_(orders == 1, last >= as_of_us - new_us), key(LifecycleStage.NEW)),
        (last >= as_of_us - active_us, key(LifecycleStage.ACTIVE)),
        (last >= as_of_us - dormant_us, key(LifecycleStage.DORMANT)),
        else_=key(LifecycleStage.CHURNED),
    )


# " tier:<tier>" per tier ("" without one): the part of a membership key after the lifecycle and RFM ids.
_TIER_PARTS = {tier: " " + builtin_ids(LifecycleStage.PROSPECT, None, tier)[1] for tier in MembershipTier}


def _tier_part(sums: Any, figures_at: FiguresAt) -> Any:
    """`` tier:<tier>`` of a customer (``FiguresAt.tier``), or "" without a tier, as a SQL expression."""
    *_, silver_cents, gold_cents, diamond_cents = figures_at.limits()
    high, low = func.coalesce(sums.c.monetary_high, 0), func.coalesce(sums.c.monetary_low, 0)
    return case(
        (wide_at_least(high, low, diamond_cents), _TIER_PARTS[MembershipTier.DIAMOND]),
        (wide_at_least(high, low, gold_cents), _TIER_PARTS[MembershipTier.GOLD]),
        (wide_at_least(high, low, silver_cents + 1), _TIER_PARTS[MembershipTier.SILVER]),
        else_="",
    )


def _builtin_key(sums: Any, figures_at: FiguresAt, cuts: RfmCuts) -> Any:
    """The membership key of a customer's built-in segments (``membership_key(builtin_ids(...))``) as a SQL
    expression over their order sums: ``FiguresAt.lifecycle``, ``.tier`` and ``RfmCuts.segment_of`` on
    the same integers (tests hold them equal). Ids sort lifecycle < rfm < tier, so the key is their
    concatenation."""
    as_of_us = figures_at.as_of_us
    last = sums.c.last_order_us
    frequency = func.coalesce(sums.c.frequency, 0)
    # R score: 1 + the recency cuts above the customer's recency_days; recency_days < c <=> last > A - c days.
    r_score = sum((case((last > as_of_us - cut * DAY_US, 10), else_=0) for cut in cuts.recency_days), 10)
    f_score = sum((case((frequency > cut, 1), else_=0) for cut in cuts.frequency), 1)
    cells = {10 * r + f: " " + builtin_ids(LifecycleStage.PROSPECT, rfm_segment(r, f), None)[1]
             for r, f in product(SCORES, SCORES)}
    rfm = case((frequency == 0, ""), else_=case(cells, value=r_score + f_score, else_=""))
    return (_lifecycle_id(sums, figures_at) + rfm + _tier_part(sums, figures_at)).label("segment_ids")


async def stage_and_tier_counts(
    connection: AsyncConnection, figures_at: FiguresAt,
) -> dict[tuple[LifecycleStage, MembershipTier | None], int]:
    """How many customers known at as_of are in each (lifecycle stage, tier or None), decided and counted in
    the database with the same expressions as the membership rounds."""
    sums = _order_sums(figures_at.as_of_us, figures_at.lookback_start_us, None)
    stage, tier = _lifecycle_id(sums, figures_at).label("stage"), _tier_part(sums, figures_at).label("tier")
    query = (select(stage, tier, func.count())
             .select_from(profiles.outerjoin(sums, sums.c.person_key == profiles.c.person_key))
             .where(profiles.c.first_seen_us <= figures_at.as_of_us)
             .group_by(stage, tier))
    stages = {builtin_ids(stage, None, None)[0]: stage for stage in LifecycleStage}
    tiers: dict[str, MembershipTier | None] = {part: tier for tier, part in _TIER_PARTS.items()} | {"": None}
    return {(stages[stage_id], tiers[tier_part]): customers
            for stage_id, tier_part, customers in await connection.execute(query)}


async def stages_of(connection: AsyncConnection, figures_at: FiguresAt,
                    persons: Collection[str]) -> list[tuple[LifecycleStage, MembershipTier | None]]:
    """(lifecycle stage, tier or None) at as_of of those of the persons known then, decided in the database as
    ``stage_and_tier_counts`` decides them."""
    stages = {builtin_ids(stage, None, None)[0]: stage for stage in LifecycleStage}
    tiers: dict[str, MembershipTier | None] = {part: tier for tier, part in _TIER_PARTS.items()} | {"": None}
    found: list[tuple[LifecycleStage, MembershipTier | None]] = []
    for batch in chunks(persons):
        sums = _order_sums(figures_at.as_of_us, figures_at.lookback_start_us, batch)
        query = (select(_lifecycle_id(sums, figures_at), _tier_part(sums, figures_at))
                 .select_from(profiles.outerjoin(sums, sums.c.person_key == profiles.c.person_key))
                 .where(profiles.c.first_seen_us <= figures_at.as_of_us, profiles.c.person_key.in_(batch)))
        found += [(stages[stage_id], tiers[tier_part]) for stage_id, tier_part in await connection.execute(query)]
    return found


def round_candidates(windows: Sequence[tuple[int, int]], known_after_us: int, as_of_us: int) -> SelectBase:
    """Persons with a counted order in one of the ranges ``(after, until]`` or first seen in
    (known_after, as_of]: whose built-in segments can have changed (domain/rounds.py)."""
    order = counted_orders.c
    newly_known = select(profiles.c.person_key).where(profiles.c.first_seen_us > known_after_us,
                                                      profiles.c.first_seen_us <= as_of_us)
    if not windows:
        return newly_known
    in_windows = or_(*(and_(order.occurred_us > after, order.occurred_us <= until) for after, until in windows))
    return select(order.person_key).where(in_windows).union(newly_known)


def _everyones_changes(figures_at: FiguresAt, cuts: RfmCuts) -> Select[Any]:
    """``(person_key, segment_ids, stored)`` of every person whose built-in membership key at as_of differs from the
    stored one (``stored`` "" without one; ``segment_ids`` "" for a person with a stored membership who is unknown
    at as_of)."""
    as_of_us = figures_at.as_of_us
    sums = _order_sums(as_of_us, figures_at.lookback_start_us, None)
    people = profiles.join(customer_segments, customer_segments.c.person_key == profiles.c.person_key, full=True)
    key = case((profiles.c.first_seen_us <= as_of_us, _builtin_key(sums, figures_at, cuts)), else_="")
    stored = func.coalesce(customer_segments.c.segment_ids, "")
    # OFFSET 0 keeps the planner from merging this subquery into the one filtering it: the key (a few dozen CASE
    # branches and concatenations) is computed once per person, not once for the filter and again for the output
    # (a million customers: 12 to 20% of the query).
    everyone = (select(func.coalesce(profiles.c.person_key, customer_segments.c.person_key).label("person_key"),
                       key.label("segment_ids"), stored.label("stored"))
                .select_from(people.outerjoin(sums, sums.c.person_key == profiles.c.person_key))
                .offset(0).subquery("everyone"))
    return select(everyone).where(everyone.c.segment_ids != everyone.c.stored)


async def builtin_membership_changes(
    connection: AsyncConnection, figures_at: FiguresAt, cuts: RfmCuts, scope: SelectBase | Collection[str],
) -> tuple[int, list[tuple[str, str, str | None]]]:
    """Decide the built-in segments at as_of in the database and compare them with the stored membership, of the
    persons a query selects or of the named ones (everyone: ``store_everyones_builtin_changes``).

    Returns (customers evaluated, ``(person_key, membership key, stored key or None)`` of those whose key
    changed; ``""`` for a person with a stored membership who is unknown at as_of).
    """
    if isinstance(scope, SelectBase):
        return await _scoped_changes(connection, figures_at, cuts, scope)
    dialect = connection.dialect.name
    named = _PERSON_ROWS.select(dialect).subquery("named")
    return await _scoped_changes(connection, figures_at, cuts, select(named.c[0].label("person_key")),
                                 _PERSON_ROWS.params(dialect, [(person,) for person in scope]))


async def _scoped_changes(connection: AsyncConnection, figures_at: FiguresAt, cuts: RfmCuts, scope: SelectBase,
                          params: dict[str, Any] | None = None) -> tuple[int, list[tuple[str, str, str | None]]]:
    as_of_us = figures_at.as_of_us
    chosen = scope.cte("chosen")
    person = chosen.c.person_key
    sums = _order_sums(as_of_us, figures_at.lookback_start_us, select(person))  # type: ignore[arg-type]
    known = profiles.c.first_seen_us <= as_of_us
    key = case((known, _builtin_key(sums, figures_at, cuts)), else_="")
    query = (select(person, key, customer_segments.c.segment_ids, func.coalesce(known, False))
             .select_from(chosen.outerjoin(profiles, profiles.c.person_key == person)
                          .outerjoin(customer_segments, customer_segments.c.person_key == person)
                          .outerjoin(sums, sums.c.person_key == person)))
    evaluated, changed = 0, []
    for person_key, segment_ids, stored, is_known in await connection.execute(query, params or {}):
        evaluated += bool(is_known)
        if segment_ids != (stored or ""):
            changed.append((person_key, segment_ids, stored))
    return evaluated, changed
