"""Webhook delivery of touches (SPEC.md "Campaigns": Webhooks, Standard Webhooks v1).

A replica claims due pending touches in one short transaction (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the
writer's BEGIN IMMEDIATE), moving each one a lease ahead so no other replica sends it meanwhile; it POSTs them
outside any transaction, at most ``webhooks.concurrency`` at once through one shared aiohttp session (keep-alive
pool of that size; httpx's pool did an order of magnitude fewer requests per second, docs/campaigns.md), then records
the outcomes in one transaction, each only if its claim still holds.
The webhook-id is the touch_id on every attempt, so a receiver that saw an attempt whose answer was lost (a
replica killed mid-send) recognises the retry.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db import Database
from libs.common.events import epoch_micros, format_timestamp
from services.campaigns.adapters.campaigns import CampaignRecord, load_campaign
from services.campaigns.adapters.report_state import lock_report, record_deliveries, touched_and_discount
from services.campaigns.adapters.tables import campaigns, touches
from services.campaigns.domain import budget, webhooks
from services.campaigns.enrolment import DELIVERED, FAILED, PENDING, queue_touch_records, touch_public
from services.campaigns.settings import WebhookSettings

log = logging.getLogger(__name__)
_SECOND_US = 1_000_000
# What is read of an answer's body (only the status and Retry-After count); a longer body closes the connection.
_MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``delivered``, ``retry`` or ``disable`` (410), with the reason and Retry-After."""

    verdict: str
    detail: str
    retry_after: float | None = None


def webhook_body(touch: dict[str, Any], campaign: CampaignRecord) -> bytes:
    """``{"type": "campaign.touch", "timestamp", "data": <the touch, with the offer>}``; the same bytes on every
    attempt (the timestamp is the touch's creation; the attempt's time is the webhook-timestamp header)."""
    message = next((v.get("message") for v in campaign.variants if v["name"] == touch["variant"]), None)
    data = {**touch, "status": PENDING, "delivered_at": None, "campaign_name": campaign.name,
            "offer": campaign.offer, "message": message}
    return orjson.dumps({"type": "campaign.touch", "timestamp": touch["created_at"], "data": data})


class CheckedResolver(AbstractResolver):
    """The webhook connections' resolver outside local mode: a name is resolved once for both the check and the
    connection, and the connector dials only addresses that pass SPEC's rules. A DNS answer that changes between a
    check and a connection (rebinding) therefore cannot reach a loopback or private address."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = webhooks.address_refused(result["host"])
            if reason is not None:
                # strerror: the text aiohttp shows in its connection error (the touch's last_error)
                raise OSError(errno.EPERM, f"webhook URL refused at send time: {host} resolves to "
                                           f"{reason.removeprefix('address ')}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class Deliverer:
    """Claims due touches, POSTs them signed, and records what became of each."""

    def __init__(self, database: Database, settings: WebhookSettings, *,
                 clock: Callable[[], datetime], local_mode: bool, owner: str,
                 rng: random.Random | None = None, resolver: AbstractResolver | None = None) -> None:
        self.database = database
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self.settings = settings
        self.clock = clock
        self.local_mode = local_mode
        self.owner = owner
        self.rng = rng or random.Random()
        self.attempts = 0
        self.delivered = 0

    def _client(self) -> aiohttp.ClientSession:
        """The shared session, made on first use (inside the running loop): ``concurrency`` pooled keep-alive
        connections, no proxy from the environment, redirects never followed (each call says so)."""
        if self._session is None or self._session.closed:
            resolver = None if self.local_mode else CheckedResolver(self._resolver)
            connector = aiohttp.TCPConnector(limit=self.settings.concurrency, limit_per_host=0, resolver=resolver)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver_due(self, limit: int) -> int:
        """Claim up to ``limit`` due touches, send them, record the outcomes; returns how many were claimed."""
        claimed, by_campaign = await self._claim(limit)
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def attempt(row: Any) -> Outcome:
            async with gate:
                return await self._send(row, by_campaign[row.campaign_id])

        outcomes = await asyncio.gather(*(attempt(row) for row, _lease in claimed))
        await self._record(claimed, outcomes, by_campaign)
        return len(claimed)

    async def _claim(self, limit: int) -> tuple[list[tuple[Any, int]], dict[str, CampaignRecord]]:
        now_us = epoch_micros(self.clock())
        lease_us = now_us + int(self.settings.claim_lease_seconds * _SECOND_US)
        t, c = touches.c, campaigns.c
        query = (select(touches).join(campaigns, c.campaign_id == t.campaign_id)
                 # Deliveries of a paused campaign wait for it to be resumed (a budget stop sends no more).
                 .where(t.status == PENDING, t.next_attempt_us <= now_us, c.status.in_(("active", "completed")))
                 .order_by(t.next_attempt_us).limit(limit)
                 .with_for_update(skip_locked=True, of=touches))
        async with self.database.begin() as connection:
            rows = list((await connection.execute(query)).all())
            if not rows:
                return [], {}
            by_campaign: dict[str, CampaignRecord] = {}
            for campaign_id in {row.campaign_id for row in rows}:
                record = await load_campaign(connection, campaign_id)
                assert record is not None
                by_campaign[campaign_id] = record
            rows = await _within_budgets(connection, rows, by_campaign)
            for start in range(0, len(rows), 900):
                ids = [row.touch_id for row in rows[start:start + 900]]
                await connection.execute(update(touches).where(t.touch_id.in_(ids)).values(next_attempt_us=lease_us))
        return [(row, lease_us) for row in rows], by_campaign

    async def _send(self, row: Any, campaign: CampaignRecord) -> Outcome:
        if campaign.webhook_disabled:
            return Outcome("disable", campaign.webhook_disabled)
        url = campaign.webhook_url
        # A name's addresses are checked by CheckedResolver, where the connection resolves it.
        refused = webhooks.url_allowed(url, None, self.local_mode)
        if refused:
            return Outcome("retry", f"webhook URL refused at send time: {refused}")
        body = webhook_body(touch_public(row), campaign)
        timestamp = int(time.time())  # real time: receivers check it against their clock
        headers = webhooks.headers(campaign.webhook_secret, row.touch_id, timestamp, body)
        self.attempts += 1
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as response:
                status, retry_after = response.status, response.headers.get("retry-after")
                await _drain(response.content)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Outcome("retry", (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500])
        return Outcome(webhooks.classify(status), f"HTTP {status}",
                       webhooks.parse_retry_after(retry_after, datetime.now(UTC)))

    async def _record(self, claimed: Sequence[tuple[Any, int]], outcomes: Sequence[Outcome],
                      by_campaign: dict[str, CampaignRecord]) -> None:
        now = self.clock()
        now_us = epoch_micros(now)
        changed: list[dict[str, Any]] = []
        disabled: dict[str, str] = {}
        delivered: list[Any] = []
        async with self.database.begin() as connection:
            await lock_report(connection)  # delivered touches count in the report (touched)
            for (row, lease_us), outcome in zip(claimed, outcomes, strict=True):
                attempts = row.attempts + 1
                if outcome.verdict == "delivered":
                    delivered.append((row, lease_us))
                    continue
                values: dict[str, Any] = {"attempts": attempts, "last_error": outcome.detail}
                if outcome.verdict == "disable":
                    values |= {"status": FAILED, "next_attempt_us": None}
                    if not by_campaign[row.campaign_id].webhook_disabled:
                        disabled[row.campaign_id] = (f"the endpoint answered 410 Gone at {format_timestamp(now)}; "
                                                     "deliveries stopped")
                else:
                    delay = webhooks.next_attempt_delay(attempts, self.settings.retry_schedule_seconds,
                                                        outcome.retry_after, self.rng)
                    if delay is None:
                        values |= {"status": FAILED, "next_attempt_us": None}
                    else:
                        values["next_attempt_us"] = now_us + int(delay * _SECOND_US)
                # Only while our claim holds: a lease that ran out may have gone to another replica.
                result = await connection.execute(
                    update(touches).where(touches.c.touch_id == row.touch_id, touches.c.status == PENDING,
                                          touches.c.next_attempt_us == lease_us).values(**values))
                if result.rowcount and values.get("status") == FAILED:
                    changed.append(touch_public(row) | {"status": FAILED})
            # Deliveries in one statement per claim (they share its lease), again only while the claim holds.
            for start in range(0, len(delivered), 900):
                part = delivered[start:start + 900]
                t = touches.c
                result = await connection.execute(
                    update(touches)
                    .where(t.touch_id.in_([row.touch_id for row, _ in part]), t.status == PENDING,
                           t.next_attempt_us == part[0][1])
                    .values(status=DELIVERED, delivered_us=now_us, next_attempt_us=None, last_error=None,
                            attempts=t.attempts + 1)
                    .returning(t.touch_id))
                recorded = set(result.scalars())
                self.delivered += len(recorded)
                await record_deliveries(connection, [(row.campaign_id, row.person_key, row.variant)
                                                     for row, _ in part if row.touch_id in recorded], now_us)
                changed += [touch_public(row) | {"status": DELIVERED, "delivered_at": format_timestamp(now)}
                            for row, _ in part if row.touch_id in recorded]
            for campaign_id, reason in disabled.items():
                await connection.execute(update(campaigns).where(campaigns.c.campaign_id == campaign_id)
                                         .values(webhook_disabled=reason))
            await queue_touch_records(connection, changed)


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read the answer's body up to ``_MAX_ANSWER_BYTES`` so its connection is kept for the next touch; past that
    the connection is closed when the answer is released."""
    read = 0
    while read <= _MAX_ANSWER_BYTES and not content.at_eof():
        chunk = await content.read(_MAX_ANSWER_BYTES)
        if not chunk:
            return
        read += len(chunk)


async def _within_budgets(connection: AsyncConnection, rows: list[Any],
                          by_campaign: dict[str, CampaignRecord]) -> list[Any]:
    """Drop the touches that would take a campaign past its budget: with a per-touch cost, only as many as the
    budget left pays for are sent (the scheduler then pauses the campaign, SPEC.md "Lifecycle")."""
    kept: list[Any] = []
    allowed: dict[str, int | None] = {}
    for row in rows:
        campaign_id = row.campaign_id
        if campaign_id not in allowed:
            campaign = by_campaign[campaign_id]
            if campaign.budget_cents is None or campaign.per_touch_cost_cents <= 0:
                allowed[campaign_id] = None
            else:
                spent = await spent_cents(connection, campaign)
                left = campaign.budget_cents - spent
                allowed[campaign_id] = max(-(-left // campaign.per_touch_cost_cents), 0)
        room = allowed[campaign_id]
        if room is None:
            kept.append(row)
        elif room > 0:
            allowed[campaign_id] = room - 1
            kept.append(row)
    return kept


async def spent_cents(connection: AsyncConnection, campaign: CampaignRecord) -> int:
    """Delivered touches x per-touch cost + discount cost of the redemptions so far (SPEC.md "Lifecycle": budget),
    from the running report totals (every delivered touch and redemption is in them)."""
    touched, discount = await touched_and_discount(connection, campaign.campaign_id)
    return int(budget.spent(touched, campaign.per_touch_cost_cents, discount))


async def fail_pending_of(connection: AsyncConnection, person_keys: Sequence[str]) -> None:
    """Never send a touch to an erased person."""
    for start in range(0, len(person_keys), 900):
        await connection.execute(update(touches).where(touches.c.person_key.in_(person_keys[start:start + 900]),
                                                       touches.c.status == PENDING)
                                 .values(status=FAILED, next_attempt_us=None, last_error="person erased"))
