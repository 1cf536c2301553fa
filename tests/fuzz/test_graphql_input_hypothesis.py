"""Hypothesis over HTTP on the GraphQL ingestion endpoint, as stigg-api-client-v2 posts to it:
operations, envelopes and inputs of every shape. Never a 5xx; every answer is a GraphQL
document (``data`` or ``errors`` with a message), and the service stays healthy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.api_process import ApiProcess
from tests.fuzz.strategies import EVENT_LISTS, FINITE, IDS, JSON, SAFE_INTS, TEXT

OPERATIONS = st.sampled_from(["ReportEvent", "ReportUsage", "ReportUsageBulk"])
USAGE = st.fixed_dictionaries(
    {"customerId": IDS, "featureId": IDS, "value": st.one_of(SAFE_INTS, FINITE, JSON)},
    optional={
        "updateBehavior": st.one_of(st.sampled_from(["DELTA", "SET"]), TEXT),
        "idempotencyKey": IDS,
        "createdAt": st.one_of(TEXT, st.just("2025-01-01T00:00:00Z")),
        "resourceId": IDS,
    },
)
INPUTS = st.one_of(
    JSON,
    st.fixed_dictionaries({"usageEvents": EVENT_LISTS}, optional={"environmentId": TEXT}),
    USAGE,
    st.fixed_dictionaries({"usages": st.lists(USAGE, max_size=4)}),
)
DOCUMENTS = st.one_of(
    st.fixed_dictionaries(
        {
            "operationName": st.one_of(OPERATIONS, TEXT, st.none()),
            "query": st.one_of(st.just("mutation { x }"), TEXT),
            "variables": st.one_of(st.fixed_dictionaries({"input": INPUTS}), JSON),
        }
    ),
    JSON,
)


@pytest.fixture(scope="module")
def client(fuzz_api: ApiProcess) -> Any:
    # Declared JSON even when there is no body (json=None): the content type is not under test.
    headers = {"X-API-KEY": fuzz_api.api_key, "Content-Type": "application/json"}
    with httpx.Client(base_url=fuzz_api.url, headers=headers, timeout=30) as http:
        yield http


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=DOCUMENTS)
def test_graphql_ingestion_never_fails_with_5xx(client: httpx.Client, document: Any) -> None:
    response = client.post("/graphql", json=document)
    assert response.status_code in (200, 400, 413), (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict)
    if "errors" in body:
        assert body["errors"] and all(e.get("message") for e in body["errors"])
    else:
        assert response.status_code == 200 and isinstance(body.get("data"), dict)


def test_the_service_is_healthy_after_the_fuzzing(
    fuzz_api: ApiProcess, client: httpx.Client
) -> None:
    assert fuzz_api.alive()
    assert client.get("/readyz").status_code == 200
    ok = client.post(
        "/graphql",
        json={
            "operationName": "ReportEvent",
            "query": "mutation ReportEvent($input: UsageEventsReportInput!) "
            "{ reportEvent(input: $input) }",
            "variables": {
                "input": {
                    "usageEvents": [
                        {"customerId": "c", "eventName": "api_call", "idempotencyKey": "gql-ok"}
                    ]
                }
            },
        },
    )
    assert ok.status_code == 200 and ok.json() == {"data": {"reportEvent": None}}
