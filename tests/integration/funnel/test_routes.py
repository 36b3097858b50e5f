"""The funnel routes over real HTTP, a real broker and both databases (SPEC.md "API surface: funnel")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from libs.common.events import format_timestamp
from libs.common.privacy import ErasureRequest, publish_erasure
from services.funnel.adapters.tables import events
from services.funnel.domain.funnels import DEFAULT_FUNNEL
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
    running_funnel,
    view,
    wait_consumed,
)
from tests.support import eventually

DAY = datetime(2026, 3, 2, tzinfo=UTC)
AS_OF = DAY + timedelta(days=5)


def at(hours: float = 0, days: float = 0) -> datetime:
    return DAY + timedelta(days=days, hours=hours)


async def all_pages(funnel, path: str, **params) -> list:
    """Every item of a list route, read one item per page through the opaque cursor."""
    items, cursor = [], None
    while True:
        page = await funnel.get(path, **params, limit=1, cursor=cursor)
        items += page["items"]
        if (cursor := page["next_cursor"]) is None:
            return items


def story():
    duplicate_view = view("cid", at(2), "p2", source="douyin", category="shoes", price="50", event_id="dup-view")
    return [
        view("ann", at(1), "p1", source="google", category="dresses", price="399", name="真丝连衣裙",
             tier="形象款"),
        cart("ann", at(2), "p1"),
        order("ann", at(3), "o1", [("p1", 1, "399")]),
        order("ann", at(6), "o1", [("p1", 1, "399")]),  # the same order completed again: counted once
        review("ann", at(7), 2, "p1"),
        view("bob", at(1), "p1"),
        inquiry("bob", at(4), "p1", response_seconds=30),
        order("bob", at(5), "o2", [("p2", 2, "50")], categories={"p2": "shoes"}),
        refund("bob", at(1, days=1), "o2", "20"),
        refund("dan", at(7), "o-ghost"),  # a refund of an order never seen: kept, counts for nothing
        duplicate_view,
        duplicate_view,  # the same event_id twice: counted once
        # Seen long ago, silent for two months, viewed again: not a new product (SPEC "Product lifecycle").
        view("eve", AS_OF - timedelta(days=60), "p-old"),
        view("eve", AS_OF - timedelta(days=1), "p-old", category="bags"),
        # Attributes carried only outside the span asked about still are the product's latest ones.
        view("fay", at(2, days=3), "p1", category="gowns"),
        view("eve", AS_OF - timedelta(days=59), "p-vintage"),
        view("eve", AS_OF - timedelta(days=58), "p-vintage", category="bags", price="80"),
        view("eve", AS_OF - timedelta(days=2), "p-vintage"),
    ]


async def test_a_day_of_the_shop_is_answered_exactly_by_every_route(funnel, publisher):
    events = story()
    await wait_consumed(funnel.app, await publish(publisher, events))
    known = facts(events)
    as_of = format_timestamp(AS_OF)

    # KPIs, counted by hand from the story.
    answer = await funnel.get("/v1/kpis", **{"from": "2026-03-02", "to": "2026-03-03"}, as_of=as_of)
    assert answer["from"] == "2026-03-02T00:00:00.000000Z" and answer["granularity"] == "range"
    assert {k: answer[k] for k in ("pv", "uv", "cart_users", "inquiry_users", "buyers", "orders")} == {
        "pv": 3, "uv": 3, "cart_users": 1, "inquiry_users": 1, "buyers": 2, "orders": 2}
    assert (answer["gmv"], answer["refunds"], answer["net_gmv"]) == (499.0, 0.0, 499.0)
    assert (answer["aov"], answer["revenue_per_buyer"], answer["uv_value"]) == (249.5, 249.5, 166.33)
    assert answer["conversion_rate"] == 2 / 3 and answer["repurchase_rate"] == 0.0
    assert (answer["inquiry_rate"], answer["inquiry_conversion"], answer["median_response_seconds"]) == (
        1 / 3, 1.0, 30.0)
    assert answer["return_rate"] == 0.5  # o2 is refunded the next day, known at as_of
    assert (answer["review_count"], answer["avg_rating"], answer["negative_share"]) == (1, 2.0, 1.0)
    assert "days" not in answer
    next_day = await funnel.get("/v1/kpis", **{"from": "2026-03-03", "to": "2026-03-04"}, as_of=as_of)
    assert (next_day["refunds"], next_day["net_gmv"], next_day["return_rate"]) == (20.0, -20.0, None)
    before_refund = await funnel.get("/v1/kpis", **{"from": "2026-03-02", "to": "2026-03-03"},
                                     as_of="2026-03-02T23:59:59Z")
    assert before_refund["return_rate"] == 0.0

    # Every route against the domain computed directly on the same events.
    span = {"from": "2026-03-02", "to": "2026-03-04", "as_of": as_of}
    start, end = DAY, DAY + timedelta(days=2)
    by_day = await funnel.get("/v1/kpis", **span, granularity="day")
    assert [day["date"] for day in by_day["days"]] == ["2026-03-02", "2026-03-03"]
    want = expected.kpis(known, start, end, AS_OF, "UTC")
    assert expected.subset(by_day, want) == want

    result = await funnel.get("/v1/funnels/default/result", **span, breakdown="source")
    want = expected.funnel(known, DEFAULT_FUNNEL, start, end, AS_OF, "source")
    assert expected.subset(result, want) == want
    assert result["counts"] == [3, 1, 1] and result["converted_value"] == 399.0

    products = await funnel.get("/v1/products", **span)
    assert products["items"] == expected.products(known, start, end, AS_OF)
    assert (products["items"][0]["name"], products["items"][0]["category"]) == ("真丝连衣裙", "gowns")
    assert await all_pages(funnel, "/v1/products", **span) == products["items"]

    matrix = await funnel.get("/v1/products/matrix", as_of=as_of)
    assert matrix["items"] == expected.matrix(known, AS_OF)
    assert await all_pages(funnel, "/v1/products/matrix", as_of=as_of) == matrix["items"]
    dress = next(item for item in matrix["items"] if item["product_id"] == "p1")
    assert (dress["declared_tier"], dress["lifecycle"]) == ("flagship", "introduction")
    old = next(item for item in matrix["items"] if item["product_id"] == "p-old")
    assert (old["lifecycle"], old["category"]) == ("inactive", "bags")
    vintage = next(item for item in matrix["items"] if item["product_id"] == "p-vintage")
    assert (vintage["category"], vintage["price"]) == ("bags", 80.0)

    channels = await funnel.get("/v1/channels", **span)
    assert channels["items"] == expected.channels(known, start, end, AS_OF)
    google = next(item for item in channels["items"] if item["source"] == "google")
    assert (google["orders"], google["gmv"], google["new_customers"]) == (1, 399.0, 1)  # o1 via ann's google visit

    # A funnel defined now answers over the history sent before it.
    definition = {"name": "inquiry path", "window_seconds": 86400,
                  "steps": [{"type": "view"}, {"type": "inquiry"}, {"type": "order", "where": {"category": "shoes"}}]}
    created = (await funnel.client.post("/v1/funnels", json=definition, headers=CAMPAIGNS)).json()
    result = await funnel.get(f"/v1/funnels/{created['funnel_id']}/result", **span, breakdown="category")
    assert result["counts"] == [3, 1, 1]  # bob: view -> inquiry -> order of shoes
    assert result["converted_value"] == 100.0
    assert set(result["breakdown"]) == {"gowns", "shoes"}  # p1's category as known at as_of



async def test_an_erasure_request_removes_the_persons_key_from_stored_events_and_keeps_every_count(
    funnel, publisher
):
    await wait_consumed(funnel.app, await publish(publisher, story()))
    span = {"from": "2026-03-02", "to": "2026-03-04", "as_of": format_timestamp(AS_OF)}
    routes = ("/v1/kpis", "/v1/funnels/default/result", "/v1/channels", "/v1/products")
    before = [await funnel.get(path, **span) for path in routes]

    await publish_erasure(publisher, ErasureRequest.new("ann", datetime(2026, 3, 6, tzinfo=UTC)))

    async def keys_left() -> list[str]:
        async with funnel.app.state.service.database.read() as connection:
            return (await connection.execute(select(events.c.person_key).distinct())).scalars().all()

    await eventually(lambda: _without(keys_left, "ann"), what="ann's key to be gone from stored events")
    assert [await funnel.get(path, **span) for path in routes] == before
    pseudonyms = [key for key in await keys_left() if key.startswith("erased:")]
    assert len(pseudonyms) == 1  # one stand-in for all of ann's events: distinct counts stay as they were


async def _without(keys_left, person: str) -> bool:
    return person not in await keys_left()


async def test_reports_computed_in_python_refuse_to_read_more_rows_than_allowed(settings, publisher):
    # Ten views over ten days, and room for five rows. A funnel in which one event could match two steps is
    # answered in Python from loaded facts: a range of at most five days answers, a longer one is refused with
    # the reason, never loaded whole. The reports DuckDB answers read no rows into Python and are not refused.
    views = [view(f"u{n}", at(days=n), "p1") for n in range(10)]
    async with running_funnel(settings.model_copy(update={"max_report_rows": 5})) as funnel:
        await wait_consumed(funnel.app, await publish(publisher, views))
        twice = {"name": "viewed twice", "steps": [{"type": "view"}, {"type": "view"}], "window_seconds": 3600}
        created = await funnel.client.post("/v1/funnels", json=twice, headers=CAMPAIGNS)
        result = f"/v1/funnels/{created.json()['funnel_id']}/result"
        # Entrants in [day 0, day 4.5), later steps up to an hour after: five views read.
        narrow = {"from": format_timestamp(at()), "to": format_timestamp(at(days=4, hours=12)),
                  "as_of": format_timestamp(AS_OF)}
        assert (await funnel.get(result, **narrow))["counts"][0] == 5
        wide = narrow | {"to": format_timestamp(at(days=10)), "as_of": format_timestamp(at(days=20))}
        response = await funnel.client.get(result, params=wide)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "range_too_large" and "max_report_rows" in response.json()["detail"]
        [product] = (await funnel.get("/v1/products", **wide))["items"]
        assert product["views"] == 10
        assert len((await funnel.get("/v1/products/matrix", as_of=wide["as_of"]))["items"]) == 1
        assert (await funnel.get("/v1/channels", **wide))["items"][0]["uv"] == 10
