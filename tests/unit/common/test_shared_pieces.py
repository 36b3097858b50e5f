"""The pieces libs/common holds so that services do not write them again: table columns named in runs, response
models derived from domain dataclasses, the background loop, what the middlewares read of an answer, stopping a
child process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Literal

import pytest
from pydantic import Field
from sqlalchemy import BigInteger, MetaData, String, Table

from libs.common.answers import AnswerWatch, route_template
from libs.common.background import BackgroundLoop
from libs.common.broker import stop_process
from libs.common.columns import optional, primary, required
from libs.common.http import response_model
from services.funnel.domain.kpis import Kpis
from services.funnel.schemas import KpiFigures


def test_column_runs_keep_the_order_given_and_say_key_null_or_not_null():
    table = Table("t", MetaData(), *primary(a=String(10), b=BigInteger), *required(c=BigInteger),
                  *optional(d=String(5)), *required(e=BigInteger))
    assert [column.name for column in table.c] == ["a", "b", "c", "d", "e"]
    assert [column.name for column in table.primary_key] == ["a", "b"]
    assert {column.name: column.nullable for column in table.c} == {
        "a": False, "b": False, "c": False, "d": True, "e": False}


@dataclass(frozen=True)
class _Figures:
    name: str
    gmv: Decimal
    aov: Decimal | None
    tier: Literal["a", "b"]
    counts: tuple[int, ...]
    rate: float | None
    hidden: int


def test_a_response_model_has_the_dataclass_fields_in_order_typed_as_answered():
    model = response_model("FiguresPublic", _Figures, module=__name__, leave_out={"hidden"},
                           extra=(bool, Field(description="added")))
    properties = model.model_json_schema()["properties"]
    assert list(properties) == ["name", "gmv", "aov", "tier", "counts", "rate", "extra"]
    assert properties["gmv"]["type"] == "number"
    assert [part["type"] for part in properties["aov"]["anyOf"]] == ["number", "null"]
    assert properties["tier"] == {"title": "Tier", "type": "string"}
    assert properties["counts"]["type"] == "array"
    assert properties["extra"]["description"] == "added"
    answer = model(name="n", gmv=1.5, aov=None, tier="anything", counts=[1, 2], rate=None, extra=True)
    assert answer.model_dump() == {"name": "n", "gmv": 1.5, "aov": None, "tier": "anything", "counts": [1, 2],
                                   "rate": None, "extra": True}
    only = response_model("Only", _Figures, module=__name__, only={"rate", "name"})
    assert list(only.model_fields) == ["name", "rate"]


def test_the_kpi_answer_has_every_kpi_of_the_domain_in_its_order():
    assert list(KpiFigures.model_fields) == [field.name for field in fields(Kpis)]


class _Loop(BackgroundLoop):
    def __init__(self) -> None:
        super().__init__("test-loop", database=None, publisher=None, clock=None)  # type: ignore[arg-type]
        self.passes = 0
        self.passed = asyncio.Event()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            self.passes += 1
            self.passed.set()
            self._succeeded()
            await self._sleep(60)


async def test_a_loop_waits_longer_after_each_failure_in_a_row_and_stops_after_the_pass_in_hand():
    loop = _Loop()
    retries = [loop._retry_seconds]
    for _ in range(8):
        loop._wake.set()  # the waits end at once
        await loop._wait_after_failure()
        retries.append(loop._retry_seconds)
    assert retries == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    loop._succeeded()
    assert loop._retry_seconds == 0.2

    ready = asyncio.Event()
    loop.start(ready.wait)
    ready.set()
    await asyncio.wait_for(loop.passed.wait(), 5)
    await asyncio.wait_for(loop.stop(), 5)  # wakes the 60 s sleep
    assert loop.passes == 1


async def test_a_loop_stopped_before_the_broker_answers_is_cancelled():
    loop = _Loop()
    loop.start(asyncio.Event().wait)  # never ready
    await asyncio.wait_for(loop.stop(), 5)
    assert loop.passes == 0


async def test_an_answer_watch_notes_the_status_and_adds_its_headers():
    sent = []

    async def send(message):
        sent.append(message)

    answer = AnswerWatch(send, [(b"x-request-id", b"r-1")])
    assert answer.status == 500  # until the answer starts
    await answer.send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"1")]})
    await answer.send({"type": "http.response.body", "body": b"{}"})
    assert answer.status == 201
    assert sent[0]["headers"] == [(b"a", b"1"), (b"x-request-id", b"r-1")]
    assert sent[1] == {"type": "http.response.body", "body": b"{}"}
    assert answer.seconds() >= 0
    assert route_template({"type": "http"}) == "unmatched"


def _child(ignore_term: bool) -> subprocess.Popen[bytes]:
    code = ("import signal, sys, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\ntime.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


@pytest.mark.parametrize("ignore_term, ended_by", [(False, signal.SIGTERM), (True, signal.SIGKILL)])
def test_stop_process_terminates_then_kills_what_outlives_the_grace(ignore_term, ended_by):
    process = _child(ignore_term)
    stop_process(process, grace_seconds=1)
    assert process.returncode == -ended_by
    stop_process(process, grace_seconds=1)  # already stopped: nothing to do
