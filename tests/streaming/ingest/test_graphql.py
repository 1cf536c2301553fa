"""GraphQL ``ReportEvent``, ``ReportUsage``, ``ReportUsageBulk`` through the official
``stigg-api-client-v2`` (only the URL and key changed), read back from Kafka."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from stigg.client import Stigg, StiggClient
from stigg.generated.enums import UsageUpdateBehavior
from stigg.generated.exceptions import GraphQLClientGraphQLMultiError
from stigg.generated.input_types import (
    ReportUsageBaseInput,
    ReportUsageBulkInput,
    ReportUsageInput,
    UsageEventReportInput,
    UsageEventsReportInput,
)

from byoc_platform.events import UsageEvent, UsageReport
from tests.streaming.ingest.harness import ApiProcess, KafkaReader, count, items_of, unique

T0 = datetime(2025, 6, 1, 10, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


@pytest.fixture
def gql(ingest_api: ApiProcess) -> Iterator[StiggClient]:
    client = Stigg.create_client(
        ingest_api.api_key, api_url=f"{ingest_api.url}/graphql", enable_edge=False
    )
    yield client
    client.http_client.close()


def test_report_event_reaches_kafka(gql: StiggClient, events_reader: KafkaReader) -> None:
    customer = unique()
    result = gql.report_event(
        UsageEventsReportInput(
            usage_events=[
                UsageEventReportInput(
                    customer_id=customer,
                    event_name="api_call",
                    idempotency_key=f"k{i}",
                    dimensions={"region": "eu", "n": i, "ok": i % 2 == 0},
                    resource_id="r1" if i == 0 else None,
                    timestamp=T0,
                )
                for i in range(3)
            ]
        )
    )
    assert result.report_event is None
    found = events_reader.read([customer], lambda f: count(f, [customer]) >= 3)
    assert items_of(found, customer) == [
        UsageEvent(
            customerId=customer,
            eventName="api_call",
            idempotencyKey=f"k{i}",
            timestamp=T0_MS,
            resourceId="r1" if i == 0 else None,
            dimensions={"region": "eu", "n": i, "ok": i % 2 == 0},
        )
        for i in range(3)
    ]


def test_report_usage_and_bulk_reach_kafka(gql: StiggClient, reports_reader: KafkaReader) -> None:
    single, a, b = unique("single"), unique("bulk-a"), unique("bulk-b")
    measurement = gql.report_usage(
        ReportUsageInput(
            customer_id=single,
            feature_id="feature-seats",
            value=7,
            update_behavior=UsageUpdateBehavior.SET,
            idempotency_key="s1",
            created_at=T0,
        )
    ).report_usage
    assert measurement.customer_id == single and measurement.feature_id == "feature-seats"
    assert measurement.current_usage == 7  # SET: the value is the usage
    assert measurement.timestamp == "2025-06-01T10:00:00.000Z"  # DateTime is Any here

    bulk = gql.report_usage_bulk(
        ReportUsageBulkInput(
            usages=[
                ReportUsageBaseInput(
                    customer_id=c,
                    feature_id="feature-tokens",
                    value=100.5,
                    idempotency_key=f"rollup:{c}",
                    created_at=T0,
                    dimensions={"model": "gpt-4o"},
                )
                for c in (a, b)
            ]
        )
    ).report_usage_bulk
    assert [m.customer_id for m in bulk] == [a, b]
    assert all(m.current_usage is None for m in bulk), "DELTA: running total unknown here"

    found = reports_reader.read([single, a, b], lambda f: count(f, [single, a, b]) >= 3)
    assert items_of(found, single) == [
        UsageReport(
            id=measurement.id,
            customerId=single,
            featureId="feature-seats",
            value=7.0,
            updateBehavior="SET",
            createdAt=T0_MS,
            idempotencyKey="s1",
        )
    ]
    for customer, m in zip((a, b), bulk, strict=True):
        assert items_of(found, customer) == [
            UsageReport(
                id=m.id,
                customerId=customer,
                featureId="feature-tokens",
                value=100.5,
                updateBehavior="DELTA",
                createdAt=T0_MS,
                idempotencyKey=f"rollup:{customer}",
                dimensions={"model": "gpt-4o"},
            )
        ]


def test_invalid_input_is_a_graphql_error_naming_the_path_and_nothing_is_written(
    gql: StiggClient, events_reader: KafkaReader
) -> None:
    good, bad = unique("good"), unique("bad")
    with pytest.raises(GraphQLClientGraphQLMultiError) as raised:
        gql.report_event(
            UsageEventsReportInput(
                usage_events=[
                    UsageEventReportInput(customer_id=good, event_name="e", idempotency_key="1"),
                    UsageEventReportInput(customer_id=bad, event_name="", idempotency_key="2"),
                ]
            )
        )
    [error] = raised.value.errors
    assert "input.usageEvents[1].eventName" in error.message
    assert error.extensions == {"code": "BadUserInput"}
    assert events_reader.settle([good, bad]) == []


def test_unknown_operation_and_malformed_body(ingest_api: ApiProcess) -> None:
    headers = {"X-API-KEY": ingest_api.api_key}
    response = httpx.post(
        f"{ingest_api.url}/graphql",
        json={"query": "query { plans { id } }", "operationName": "GetPlans", "variables": {}},
        headers=headers,
    )
    assert response.status_code == 200
    [error] = response.json()["errors"]
    assert "GetPlans" in error["message"] and "ReportEvent" in error["message"]
    malformed = httpx.post(
        f"{ingest_api.url}/graphql",
        content=b"{nope",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["errors"][0]["message"].startswith("Malformed JSON")
    anonymous = httpx.post(f"{ingest_api.url}/graphql", json={"query": "{}"})
    assert anonymous.status_code == 401


def test_too_many_events_is_a_graphql_error_the_sdk_shows(
    ingest_api: ApiProcess, gql: StiggClient, events_reader: KafkaReader
) -> None:
    """Item-level refusals are 200 with errors (the contract): as an HTTP 413 the SDK raised
    GraphQLClientHttpError with the status alone, the message lost (F59)."""
    customer = unique("gql-413")
    with pytest.raises(GraphQLClientGraphQLMultiError) as raised:
        gql.report_event(
            UsageEventsReportInput(
                usage_events=[
                    UsageEventReportInput(
                        customer_id=customer, event_name="e", idempotency_key=str(i)
                    )
                    for i in range(1001)
                ]
            )
        )
    [error] = raised.value.errors
    assert "1001" in error.message and error.extensions == {"code": "BadUserInput"}
    body = {
        "query": "mutation ReportEvent($input: UsageEventsReportInput!) "
        "{ reportEvent(events: $input) }",
        "operationName": "ReportEvent",
    }
    sentinel = {
        **body,
        "variables": {
            "input": {
                "usageEvents": [
                    {"customerId": customer, "eventName": "e", "idempotencyKey": "sentinel"}
                ]
            }
        },
    }
    ok = httpx.post(
        f"{ingest_api.url}/graphql", json=sentinel, headers={"X-API-KEY": ingest_api.api_key}
    )
    assert ok.status_code == 200 and ok.json() == {"data": {"reportEvent": None}}
    found = events_reader.read([customer], lambda f: count(f, [customer]) >= 1)
    assert [e.idempotencyKey for e in items_of(found, customer)] == ["sentinel"]


def test_openapi_documents_item_refusals_as_graphql_errors(ingest_api: ApiProcess) -> None:
    """The served document said 413 for more items than the limit: the route answers them
    200 with ``errors`` since F59 (above), so a client built from the document mishandled it."""
    document = httpx.get(f"{ingest_api.url}/openapi.json").json()
    responses = document["paths"]["/graphql"]["post"]["responses"]
    assert "items" not in responses["413"]["description"]
    assert "items" in responses["200"]["description"]
