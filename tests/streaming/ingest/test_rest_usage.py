"""REST ``POST /api/v2/usage`` through the official ``stigg`` SDK, read back from Kafka.

This process serves only ingestion (no enforcement component), so the answer carries what
ingestion knows: currentUsage = value for SET, none for DELTA (service.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from stigg._client import Stigg

from byoc_platform.events import SCHEMA_VERSION, UsageReport
from tests.stack_fixtures import Stack
from tests.streaming.ingest.harness import ApiProcess, KafkaReader, count, items_of, unique


def test_sdk_usage_reports_answer_and_reach_kafka_field_by_field(
    infra: Stack, ingest_api: ApiProcess, reports_reader: KafkaReader
) -> None:
    alice, bob = unique("alice"), unique("bob")
    client = Stigg(api_key=ingest_api.api_key, base_url=ingest_api.url)
    before = int(time.time() * 1000)
    response = client.v2.usage.report(
        usages=[
            {
                "customer_id": alice,
                "feature_id": "feature-seats",
                "value": 3,
                "update_behavior": "SET",
                "idempotency_key": "seats-1",
                "created_at": "2025-01-01T00:00:00Z",
                "resource_id": "r1",
                "dimensions": {"a": "b"},
            },
            {
                "customer_id": bob,
                "feature_id": "feature-tokens",
                "value": 1.234567,  # rounded half away from zero to 5 places
            },
        ]
    )
    after = int(time.time() * 1000)
    seats, tokens = response.data.usages
    assert seats.customer_id == alice and seats.feature_id == "feature-seats"
    assert seats.value == 3 and seats.current_usage == 3 and seats.resource_id == "r1"
    assert seats.created_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert tokens.customer_id == bob and tokens.value == 1.23457
    assert tokens.current_usage is None, "DELTA: the running total is not known here"
    assert before <= tokens.created_at.timestamp() * 1000 <= after + 1
    assert seats.id != tokens.id

    found = reports_reader.read([alice, bob], lambda f: count(f, [alice, bob]) >= 2)
    for message, batch in found:
        assert batch.v == SCHEMA_VERSION and batch.environment == infra.settings.environment
        assert message.timestamp()[1] == batch.receivedAt
    assert items_of(found, alice) == [
        UsageReport(
            id=seats.id,
            customerId=alice,
            featureId="feature-seats",
            value=3.0,
            updateBehavior="SET",
            createdAt=int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000),
            idempotencyKey="seats-1",
            resourceId="r1",
            dimensions={"a": "b"},
        )
    ]
    [bob_report] = items_of(found, bob)
    assert bob_report == UsageReport(
        id=tokens.id,
        customerId=bob,
        featureId="feature-tokens",
        value=1.23457,
        updateBehavior="DELTA",
        createdAt=bob_report.createdAt,
    )
    assert before <= bob_report.createdAt <= after


def test_retried_usage_report_answers_the_same_measurement_id(ingest_api: ApiProcess) -> None:
    customer = unique()
    client = Stigg(api_key=ingest_api.api_key, base_url=ingest_api.url)
    usage = {"customer_id": customer, "feature_id": "f", "value": 1, "idempotency_key": "k"}
    first = client.v2.usage.report(usages=[usage]).data.usages[0]
    again = client.v2.usage.report(usages=[usage]).data.usages[0]
    other = client.v2.usage.report(usages=[{**usage, "idempotency_key": "k2"}]).data.usages[0]
    assert first.id == again.id != other.id
