"""Schemathesis drives every operation of ingest's, funnel's and segmentation's OpenAPI (valid and invalid inputs,
a bounded number of examples each) against the running services: no answer is a 5xx, and every answer matches the
schema the service publishes (SPEC.md "API surface": bad input is a 4xx naming the field). Campaigns has its own
(tests/integration/campaigns/test_openapi_fuzz.py), and the gateway's own routes are fuzzed over the whole stack
(tests/e2e/test_gateway_stack.py).

One stack on SQLite (the PostgreSQL paths are covered by the other tests with the same routes); the admin key,
which holds every scope, so that requests reach the handlers rather than stopping at authorization.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.test_erasure_across_services import (  # noqa: F401  (fixtures)
    databases,
    stack,
    stack_common,
)

ADMIN = {"Authorization": "Bearer dev-admin-key"}
EXAMPLES_PER_OPERATION = 15
# Operations that change what other operations answer are fuzzed too; none of them can touch another test.
CHECKS = [not_a_server_error, response_schema_conformance]


def fuzz(base_url: str, failures: list[str], *, paths: list[str] | None = None) -> int:
    """Every operation (or those of ``paths``) of the service at ``base_url``, in both generation modes;
    returns the calls made."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    if paths is not None:
        schema = schema.include(path=paths)
    session = requests.Session()
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                response = case.call(base_url=base_url, session=session, headers=ADMIN, timeout=30)
                case.validate_response(response, checks=CHECKS)

            try:
                call()
            except Unsatisfiable:
                pass  # no invalid input exists for this operation (no parameters, no body)
            except (Exception, BaseExceptionGroup) as failure:  # schemathesis: groups; the other operations still run
                failures.append(f"{operation.label} ({mode.value}): {_described(failure)}")
    return calls


def conforms(base_url: str, path: str, method: str, *, path_parameters: dict[str, str] | None = None,
             query: dict[str, str] | None = None, body: Any = None) -> requests.Response:
    """One chosen call, its answer held to the published schema like the fuzz's (for answers random input
    cannot reach: a stored campaign's report, say); returns the answer."""
    operation = schemathesis.openapi.from_url(f"{base_url}/openapi.json")[path][method]
    case = operation.Case(path_parameters=path_parameters, query=query,
                          **({} if body is None else {"body": body, "media_type": "application/json"}))
    response = case.call(base_url=base_url, headers=ADMIN, timeout=30)
    case.validate_response(response, checks=CHECKS)
    return response


def _described(failure: BaseException) -> str:
    # A group's own text holds the response and a curl line that reproduces it.
    return " ".join(str(failure).split())[:1500]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_operation_answers_without_5xx_and_as_its_schema_says(stack):  # noqa: F811
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    calls = {}
    for name, client in (("ingest", stack.ingest), ("funnel", stack.funnel), ("segmentation", stack.segmentation)):
        run: Callable[[], int] = lambda url=str(client.base_url).rstrip("/"): fuzz(url, failures)  # noqa: E731
        calls[name] = await loop.run_in_executor(None, run)
    assert not failures, "\n".join(failures)
    assert all(count > 0 for count in calls.values()), calls
