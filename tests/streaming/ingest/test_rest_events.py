"""REST ``POST /api/v1/events`` through the official ``stigg`` SDK, read back from Kafka."""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime, timedelta, timezone

from stigg._client import Stigg

from byoc_platform.events import SCHEMA_VERSION, UsageEvent, record_key
from tests.stack_fixtures import Stack
from tests.streaming.ingest.harness import ApiProcess, KafkaReader, count, items_of, unique


def sdk(api: ApiProcess, **kwargs: object) -> Stigg:
    return Stigg(api_key=api.api_key, base_url=api.url, **kwargs)


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def test_sdk_events_reach_kafka_field_by_field(
    infra: Stack, ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    env = infra.settings.environment
    alice, bob = unique("alice"), unique("bob")
    events = [
        {
            "customer_id": alice,
            "event_name": "api_call",
            "idempotency_key": "a-1",
            "dimensions": {"region": "eu", "tokens": 12, "latency": 0.25, "ok": True},
            "resource_id": "workspace-1",
            "timestamp": "2025-01-01T00:00:00.123Z",
        },
        {
            "customer_id": bob,
            "event_name": "llm_tokens",
            "idempotency_key": "b-1",
            "dimensions": {"model": "gpt", "tokens": 1500},
            # a datetime object, as SDK users pass it (serialised with its offset)
            "timestamp": datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        },
        {
            "customer_id": alice,
            "event_name": "api_call",
            "idempotency_key": "a-2",
            "timestamp": "2025-01-01T00:00:01Z",
        },
    ]
    before = int(time.time() * 1000)
    response = sdk(ingest_api).v1.events.report(events=events)
    after = int(time.time() * 1000)
    assert response.to_dict() == {"data": {}}

    found = events_reader.read([alice, bob], lambda f: count(f, [alice, bob]) >= 3)
    assert count(found, [alice, bob]) == 3
    partitions = len({m.partition() for m, _ in found})
    for message, batch in found:
        assert batch.v == SCHEMA_VERSION
        assert batch.environment == env
        assert before <= batch.receivedAt <= after
        # The record timestamp is the receive time, never the event time (openmeter #5005).
        assert message.timestamp()[1] == batch.receivedAt
    assert len(found) == partitions, "one record per partition of the request"
    # Each customer's events are on the partition of its key (librdkafka's partitioner).
    for customer in (alice, bob):
        key = record_key(env, customer)
        expected = zlib.crc32(key) % infra.settings.kafka.partitions
        assert {
            m.partition() for m, b in found if customer in {e.customerId for e in b.events}
        } == {expected}

    assert items_of(found, alice) == [
        UsageEvent(
            customerId=alice,
            eventName="api_call",
            idempotencyKey="a-1",
            timestamp=ms(datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
            resourceId="workspace-1",
            dimensions={"region": "eu", "tokens": 12, "latency": 0.25, "ok": True},
        ),
        UsageEvent(
            customerId=alice,
            eventName="api_call",
            idempotencyKey="a-2",
            timestamp=ms(datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)),
        ),
    ]
    assert items_of(found, bob) == [
        UsageEvent(
            customerId=bob,
            eventName="llm_tokens",
            idempotencyKey="b-1",
            timestamp=ms(datetime(2025, 3, 1, 10, 0, tzinfo=UTC)),
            dimensions={"model": "gpt", "tokens": 1500},
        )
    ]
    # Dimension types survive exactly: int stays int, bool stays bool.
    dims = items_of(found, alice)[0].dimensions
    assert type(dims["tokens"]) is int and type(dims["ok"]) is bool


def test_missing_timestamp_is_receive_time_and_naive_is_utc(
    ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer = unique()
    before = int(time.time() * 1000)
    sdk(ingest_api).v1.events.report(
        events=[
            {"customer_id": customer, "event_name": "e", "idempotency_key": "k1"},
            {
                "customer_id": customer,
                "event_name": "e",
                "idempotency_key": "k2",
                "timestamp": datetime(2025, 6, 1, 8, 30),  # naive: taken as UTC
            },
        ]
    )
    after = int(time.time() * 1000)
    found = events_reader.read([customer], lambda f: count(f, [customer]) >= 2)
    [(_, batch)] = found
    first, second = items_of(found, customer)
    assert before <= first.timestamp <= after
    assert first.timestamp == batch.receivedAt
    assert second.timestamp == ms(datetime(2025, 6, 1, 8, 30, tzinfo=UTC))


def test_one_customers_events_keep_their_order_across_requests(
    ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer, other = unique(), unique("other")
    client = sdk(ingest_api)
    for request in range(5):
        client.v1.events.report(
            events=[
                {
                    "customer_id": customer if i % 2 == 0 else other,
                    "event_name": "e",
                    "idempotency_key": f"r{request}-{i}",
                }
                for i in range(6)
            ]
        )
    found = events_reader.read([customer], lambda f: count(f, [customer]) >= 15)
    mine = [(m, b) for m, b in found if customer in {e.customerId for e in b.events}]
    assert len({m.partition() for m, _ in mine}) == 1, "one customer -> one partition"
    keys = [e.idempotencyKey for e in items_of(found, customer)]
    assert keys == [f"r{r}-{i}" for r in range(5) for i in (0, 2, 4)]


def test_same_idempotency_key_different_body_both_forwarded_first_first(
    ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    """Dedup (first wins) is the stream processor's; ingestion forwards both, in order."""
    customer = unique()
    client = sdk(ingest_api)
    first = {
        "customer_id": customer,
        "event_name": "e",
        "idempotency_key": "dup",
        "dimensions": {"n": 1},
    }
    second = {**first, "dimensions": {"n": 2}}
    client.v1.events.report(events=[first])
    client.v1.events.report(events=[second])
    found = events_reader.read([customer], lambda f: count(f, [customer]) >= 2)
    assert [e.dimensions for e in items_of(found, customer)] == [{"n": 1}, {"n": 2}]


def test_a_full_batch_of_1000_big_events_is_split_into_ordered_records(
    ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer = unique()
    pad = "x" * 900  # ~1 KB per event: one partition's group exceeds one record's size cap
    events = [
        {
            "customer_id": customer,
            "event_name": "e",
            "idempotency_key": f"k{i}",
            "dimensions": {"pad": pad, "i": i},
        }
        for i in range(1000)
    ]
    sdk(ingest_api).v1.events.report(events=events)
    found = events_reader.read([customer], lambda f: count(f, [customer]) >= 1000)
    assert len(found) >= 2
    assert all(len(m.value()) <= 512 * 1024 for m, _ in found)
    assert [e.dimensions["i"] for e in items_of(found, customer)] == list(range(1000))
