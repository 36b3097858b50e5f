"""`make demo`: a seeded storefront simulator posting through the gateway's public API.

A catalogue with the four product roles (形象款 flagship, 引流款 traffic driver, 利润款 profit, 补充款
long tail) under Chinese and English names; channels of different quality (paid social, search, content,
private community, direct) with spend per day; sessions of views, carts, inquiries answered after some
seconds, orders with coupons, refunds with reasons, reviews; repeat buyers, customers drifting to dormant;
a promotion peak (warm-up, burst, afterglow) and a running win-back campaign. The same seed and end day
give the same events with the same ids, so running it twice counts nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    price: float
    tier: str  # the declared role, as Chinese operators write it
    appeal: float  # relative share of views


CATALOGUE = [
    Product("sku-silk-dress", "真丝连衣裙 Silk dress", "dresses", 1299.00, "形象款", 0.6),
    Product("sku-linen-dress", "亚麻连衣裙 Linen dress", "dresses", 399.00, "利润款", 1.2),
    Product("sku-tee-basic", "纯棉T恤 Cotton tee", "tops", 59.00, "引流款", 3.0),
    Product("sku-shirt-oxford", "牛津纺衬衫 Oxford shirt", "tops", 229.00, "利润款", 1.1),
    Product("sku-cashmere", "羊绒开衫 Cashmere cardigan", "tops", 1899.00, "形象款", 0.4),
    Product("sku-socks", "船袜三双装 Ankle socks x3", "accessories", 29.90, "引流款", 2.2),
    Product("sku-tote", "帆布托特包 Canvas tote", "accessories", 159.00, "补充款", 0.7),
    Product("sku-scarf", "桑蚕丝围巾 Mulberry silk scarf", "accessories", 499.00, "利润款", 0.6),
    Product("sku-serum", "修护精华 Repair serum", "skincare", 329.00, "利润款", 1.0),
    Product("sku-mask", "补水面膜 Hydrating mask", "skincare", 49.00, "引流款", 2.0),
    Product("sku-cream", "臻致面霜 Prestige cream", "skincare", 1580.00, "形象款", 0.3),
    Product("sku-mist", "舒缓喷雾 Soothing mist", "skincare", 89.00, "补充款", 0.5),
]


@dataclass(frozen=True)
class Channel:
    source: str
    medium: str | None
    share: float  # of new customers arriving through it
    purchase: float  # multiplier on the chance a session ends in an order
    daily_spend: float  # posted per day (0: organic)


CHANNELS = [
    Channel("paid_social", "cpc", 0.35, 0.55, 1800.0),
    Channel("search", "cpc", 0.25, 1.0, 1200.0),
    Channel("content", "social", 0.15, 0.9, 400.0),
    Channel("private_community", "wechat", 0.10, 2.2, 0.0),
    Channel("(direct)", None, 0.15, 1.3, 0.0),
]
REFUND_REASONS = ["size", "quality", "changed_mind", "late_delivery"]
REVIEW_TEXT = {5: "很满意 love it", 4: "不错 good", 3: "一般 ok", 2: "有点失望 disappointing", 1: "质量差 poor quality"}
INQUIRY_TOPICS = ["size", "material", "shipping", "discount"]


@dataclass
class Customer:
    person_key: str
    channel: Channel
    activity: float  # expected sessions per day
    loyalty: float  # multiplier on purchases (repeat buyers > 1)
    drifts_after: int | None  # day index after which the customer stops coming (dormant drift)


def promotion_lift(day: int, days: int) -> tuple[float, float]:
    """(traffic, purchase) multipliers on day ``day`` of ``days``: warm-up, burst, afterglow before the end."""
    peak = days - 8  # the burst day; a week of afterglow follows
    offset = day - peak
    if -4 <= offset < 0:
        return 1.4, 0.6  # warm-up: browsing and carts, buying held back for the sale
    if 0 <= offset <= 1:
        return 2.5, 3.0  # the burst
    if 2 <= offset <= 4:
        return 1.3, 1.3  # afterglow
    return 1.0, 1.0


class Storefront:
    """Generates the demo's events day by day from one seeded random source."""

    def __init__(self, *, seed: int, days: int, customers: int, end: date) -> None:
        self.random = random.Random(seed)
        self.seed = seed
        self.days = days
        self.start = datetime.combine(end - timedelta(days=days), datetime.min.time(), UTC)
        self.now = datetime.now(UTC)
        self._ids = 0
        self._orders = 0
        self.customers = [self._customer(index) for index in range(customers)]

    def _customer(self, index: int) -> Customer:
        r = self.random
        channel = r.choices(CHANNELS, weights=[c.share for c in CHANNELS])[0]
        drifts = r.randrange(self.days // 3, self.days) if r.random() < 0.15 else None
        return Customer(
            person_key=f"demo-{index:05d}", channel=channel, activity=r.uniform(0.08, 0.5),
            loyalty=r.choice([0.6, 1.0, 1.0, 1.6, 2.5]), drifts_after=drifts,
        )

    def _event_id(self) -> str:
        self._ids += 1
        return f"demo-{self.seed}-{self._ids:08d}"

    def _at(self, day: int) -> datetime:
        # Shoppers come mostly in the evening (local time of a UTC+8 shop, expressed in UTC).
        hour = self.random.choices(range(24), weights=[3, 2, 1, 1, 1, 1, 1, 2, 3, 3, 3, 4,
                                                       5, 6, 6, 5, 4, 3, 2, 2, 2, 2, 3, 3])[0]
        return self.start + timedelta(days=day, hours=hour, minutes=self.random.random() * 59)

    def history(self) -> Iterator[dict[str, Any]]:
        """Orders of an earlier season (90 to 200 days back) by a third of the customers: the ones who never
        come back in the simulated days are dormant or churned, the win-back campaign's audience."""
        for customer in self.customers:
            if self.random.random() >= 0.35:
                continue
            for _ in range(self.random.choice([1, 1, 2, 3])):
                when = self.start - timedelta(days=self.random.uniform(1, 170))
                if self.random.random() < 0.5:
                    when = self.start - timedelta(days=self.random.uniform(60, 170))
                product = self.random.choices(CATALOGUE, weights=[p.appeal for p in CATALOGUE])[0]
                yield from self._order(customer, when, [product], coupon=None, refund=False)

    def day(self, day: int) -> Iterator[dict[str, Any]]:
        """Every session of day ``day`` (0-based), in time order per customer."""
        traffic, purchase = promotion_lift(day, self.days)
        for customer in self.customers:
            if customer.drifts_after is not None and day > customer.drifts_after:
                continue
            sessions = self._poisson(customer.activity * traffic)
            for _ in range(sessions):
                when = self._at(day)
                if when > self.now:
                    continue
                yield from self._session(customer, when, purchase)

    def visitors(self, day: int) -> Iterator[dict[str, Any]]:
        """Anonymous visitors who browse and leave: most of a shop's traffic, none of its orders."""
        traffic, _ = promotion_lift(day, self.days)
        for index in range(self._poisson(len(self.customers) * 1.5 * traffic)):
            when = self._at(day)
            channel = self.random.choices(CHANNELS, weights=[c.share for c in CHANNELS])[0]
            utm = None if channel.source == "(direct)" else {"source": channel.source}
            visitor = f"v-{self.seed}-{day}-{index}"
            for offset, product in enumerate(self.random.choices(CATALOGUE, weights=[p.appeal for p in CATALOGUE],
                                                                 k=self.random.randint(1, 3))):
                if when + timedelta(seconds=30 * offset) > self.now:
                    break
                event = {"event_id": self._event_id(), "type": "view", "anonymous_id": visitor,
                         "occurred_at": (when + timedelta(seconds=30 * offset)).isoformat(timespec="milliseconds"),
                         "product": self._product(product)}
                yield event | ({"channel": utm} if utm else {})
            if self.random.random() < 0.04 and when + timedelta(minutes=2) < self.now:
                yield {"event_id": self._event_id(), "type": "add_to_cart", "anonymous_id": visitor,
                       "occurred_at": (when + timedelta(minutes=2)).isoformat(timespec="milliseconds"),
                       "product": self._product(self.random.choice(CATALOGUE))} | ({"channel": utm} if utm else {})

    def _poisson(self, mean: float) -> int:
        threshold, count, product = math.exp(-mean), 0, self.random.random()
        while product > threshold:
            count += 1
            product *= self.random.random()
        return count

    def _session(self, customer: Customer, when: datetime, purchase: float) -> Iterator[dict[str, Any]]:
        r = self.random
        channel = customer.channel if r.random() < 0.75 else r.choice(CHANNELS)
        utm = {"source": channel.source, **({"medium": channel.medium} if channel.medium else {})}
        if channel.source == "(direct)":
            utm = None
        session_id = f"s-{self._event_id()}"
        viewed = r.choices(CATALOGUE, weights=[p.appeal for p in CATALOGUE], k=r.randint(1, 4))
        for index, product in enumerate(viewed):
            yield self._event("view", customer, when + timedelta(seconds=40 * index), session_id, utm,
                              product=self._product(product))
        when += timedelta(minutes=3)
        carted = [p for p in dict.fromkeys(viewed) if r.random() < 0.16 * customer.loyalty ** 0.5]
        for product in carted:
            yield self._event("add_to_cart", customer, when, session_id, utm, product=self._product(product),
                              quantity=r.choice([1, 1, 1, 2]))
        answered_fast = True
        if r.random() < 0.12:
            response = r.lognormvariate(4.0, 1.2)  # median about 55 s, a long tail of slow answers
            answered_fast = response < 120
            product = r.choice(viewed)
            yield self._event("inquiry", customer, when + timedelta(minutes=1), session_id, utm,
                              product={"product_id": product.product_id},
                              inquiry={"inquiry_id": f"q-{self._event_id()}", "topic": r.choice(INQUIRY_TOPICS),
                                       "response_seconds": round(response, 1)})
        chance = 0.3 * channel.purchase * purchase * customer.loyalty * (1.0 if answered_fast else 0.5)
        if carted and r.random() < min(chance, 0.95):
            coupon = "PROMO20" if purchase > 1.5 and r.random() < 0.6 else (
                "WELCOME10" if r.random() < 0.1 else None)
            yield from self._order(customer, when + timedelta(minutes=8), carted, coupon=coupon,
                                   refund=r.random() < 0.08, utm=utm, session_id=session_id)

    def _order(self, customer: Customer, when: datetime, products: list[Product], *, coupon: str | None,
               refund: bool, utm: dict[str, str] | None = None,
               session_id: str | None = None) -> Iterator[dict[str, Any]]:
        r = self.random
        self._orders += 1
        order_id = f"demo-{self.seed}-o{self._orders:07d}"
        items = [{"product_id": p.product_id, "category": p.category, "quantity": r.choice([1, 1, 2]),
                  "unit_price": p.price} for p in products]
        subtotal = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)
        discount = round(subtotal * (0.2 if coupon == "PROMO20" else 0.1), 2) if coupon else 0.0
        total = round(subtotal - discount, 2)
        order: dict[str, Any] = {"order_id": order_id, "status": "completed", "items": items, "total": total}
        if coupon:
            order |= {"coupon_code": coupon, "discount": discount}
        yield self._event("order", customer, when, session_id, utm, order=order)
        if refund and when + timedelta(days=3) < self.now:
            amount = round(total if r.random() < 0.6 else total / 2, 2)
            yield self._event("order", customer, when + timedelta(days=r.uniform(1, 3)), None, None,
                              order={"order_id": order_id, "status": "refunded", "refund_amount": amount,
                                     "refund_reason": r.choice(REFUND_REASONS)})
        if r.random() < 0.3 and when + timedelta(days=4) < self.now:
            rating = r.choices([5, 4, 3, 2, 1], weights=[45, 25, 12, 10, 8])[0]
            yield self._event("review", customer, when + timedelta(days=r.uniform(2, 4)), None, None,
                              product=self._product(products[0]),
                              review={"rating": rating, "text": REVIEW_TEXT[rating], "order_id": order_id})

    @staticmethod
    def _product(product: Product) -> dict[str, Any]:
        return {"product_id": product.product_id, "name": product.name, "category": product.category,
                "price": product.price, "tier": product.tier}

    def _event(self, kind: str, customer: Customer, when: datetime, session_id: str | None,
               utm: dict[str, str] | None, **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"event_id": self._event_id(), "type": kind, "user_id": customer.person_key,
                                 "occurred_at": when.isoformat(timespec="milliseconds")}
        if session_id:
            event["session_id"] = session_id
        if utm:
            event["channel"] = utm
        return event | fields

    def events(self) -> Iterator[dict[str, Any]]:
        yield from self.history()
        latest = self.now.isoformat(timespec="milliseconds")
        for day in range(self.days):
            for event in (*self.day(day), *self.visitors(day)):
                # Today's sessions stop at the present (the API refuses events from the future).
                if event["occurred_at"] <= latest:
                    yield event

    def spend(self) -> Iterator[dict[str, Any]]:
        """Spend per paid channel per day, higher around the promotion peak."""
        for day in range(self.days):
            traffic, _ = promotion_lift(day, self.days)
            for channel in CHANNELS:
                if channel.daily_spend:
                    amount = round(channel.daily_spend * traffic * self.random.uniform(0.8, 1.2), 2)
                    yield {"source": channel.source, "day": (self.start + timedelta(days=day)).date().isoformat(),
                           "amount": amount}


WIN_BACK = {
    "name": "唤醒沉睡客户 Win back dormant customers",
    "audience": {"kind": "segment_entered", "segment_id": "lifecycle:dormant"},
    "offer": {"kind": "coupon", "percent_off": 15, "min_spend": 199, "expires_in_days": 14, "per_person_limit": 1},
    "variants": [{"name": "coupon", "split_bp": 4500, "message": "好久不见，送您一张85折券"},
                 {"name": "message_only", "split_bp": 4500, "message": "新品上架，回来看看"}],
    "holdout_bp": 1000, "window_days": 14, "per_touch_cost": 0.05,
}


# Nobody listens here: the touches end as failed after their retries, and every assignment still counts
# in its arm (intent to treat). Point it at a receiver of your own to watch the webhooks arrive.
DEMO_WEBHOOK = "http://127.0.0.1:9/shoploop-demo-webhook"


class Progress:
    """One line on stderr, redrawn: a bar, the count and the rate."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = max(total, 1), what, 0
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        share = min(self.done / self.total, 1.0)
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r  {self.what:<8} [{bar:<30}] {share:4.0%} {self.done:,}/{self.total:,}  {rate:,.0f}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


async def post_events(client: httpx.AsyncClient, events: list[dict[str, Any]], *, key: str, rate: float,
                      batch: int = 500, concurrency: int = 3) -> int:
    """Post ``events`` in batches (at most ``rate`` events per second; 0: as fast as the stack takes them)."""
    progress = Progress(len(events), "events")
    batches = [events[i:i + batch] for i in range(0, len(events), batch)]
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    accepted = 0

    async def send(index: int, chunk: list[dict[str, Any]]) -> None:
        nonlocal accepted
        if rate > 0:
            await asyncio.sleep(max(0.0, started + index * batch / rate - time.monotonic()))
        async with gate:
            for attempt in range(5):
                response = await client.post("/v1/events", json={"events": chunk},
                                             headers={"Authorization": f"Bearer {key}"})
                if response.status_code not in (429, 503):
                    break
                await asyncio.sleep(float(response.headers.get("retry-after", 1)) * (attempt + 1))
            response.raise_for_status()
            body = response.json()
            if body["rejected"]:
                raise RuntimeError(f"the stack rejected demo events: {body['rejected'][:3]}")
            accepted += body["accepted"]
            progress.advance(len(chunk))

    await asyncio.gather(*(send(index, chunk) for index, chunk in enumerate(batches)))
    progress.close()
    return accepted


async def post_campaigns_side(client: httpx.AsyncClient, storefront: Storefront, *, key: str, read_key: str) -> str:
    """Spend per channel and day, and the win-back campaign (created once, then active)."""
    headers = {"Authorization": f"Bearer {key}"}
    spend = list(storefront.spend())
    progress = Progress(len(spend), "spend")
    for entry in spend:
        response = await client.post("/v1/spend", json=entry, headers=headers)
        if response.status_code == 503:
            progress.close()
            return f"spend and campaign skipped: {response.json().get('detail')}"
        response.raise_for_status()
        progress.advance(1)
    progress.close()
    # Writes need the campaigns scope, reads the read scope (SPEC.md "API surface: campaigns").
    listing = await client.get("/v1/campaigns", headers={"Authorization": f"Bearer {read_key}"},
                               params={"limit": 100})
    listing.raise_for_status()
    if any(c.get("name") == WIN_BACK["name"] for c in listing.json().get("items", [])):
        return "win-back campaign already running"
    created = await client.post("/v1/campaigns", headers=headers,
                                json={**WIN_BACK, "webhook_url": DEMO_WEBHOOK})
    created.raise_for_status()
    campaign_id = created.json()["campaign_id"]
    (await client.post(f"/v1/campaigns/{campaign_id}/activate", headers=headers)).raise_for_status()
    return f"win-back campaign {campaign_id} active"


async def run(args: argparse.Namespace) -> int:
    storefront = Storefront(seed=args.seed, days=args.days, customers=args.customers, end=args.end)
    events = list(storefront.events())
    print(f"shoploop demo: {len(events):,} events of {args.customers} customers over {args.days} days "
          f"(seed {args.seed}, ending {args.end}) -> {args.gateway}", file=sys.stderr)
    async with httpx.AsyncClient(base_url=args.gateway, timeout=60) as client:
        started = time.monotonic()
        accepted = await post_events(client, events, key=args.ingest_key, rate=args.rate)
        note = await post_campaigns_side(client, storefront, key=args.campaigns_key, read_key=args.read_key)
    print(f"  {accepted:,} events accepted in {time.monotonic() - started:.1f} s; {note}", file=sys.stderr)
    print(f"\n  open the dashboard: {args.gateway}/   (range {storefront.start.date()} .. {args.end})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30, help="days of simulated trade, ending today (default 30)")
    parser.add_argument("--customers", type=int, default=300, help="customers (default 300)")
    parser.add_argument("--rate", type=float, default=0, help="events per second at most (default 0: unlimited)")
    parser.add_argument("--seed", type=int, default=7, help="the same seed and end day give the same events")
    parser.add_argument("--end", type=date.fromisoformat, default=datetime.now(UTC).date() + timedelta(days=1),
                        help="the day after the last simulated day (default: tomorrow, UTC)")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--ingest-key", default="dev-ingest-key")
    parser.add_argument("--campaigns-key", default="dev-campaigns-key")
    parser.add_argument("--read-key", default="dev-read-key")
    args = parser.parse_args(argv)
    if not (1 <= args.days <= 400 and 1 <= args.customers <= 1_000_000 and args.rate >= 0):
        parser.error("--days must be 1..400, --customers 1..1,000,000 and --rate >= 0")
    try:
        return asyncio.run(run(args))
    except httpx.HTTPError as exc:
        print(f"\nmake demo failed: {exc} (is `make run` running?)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
