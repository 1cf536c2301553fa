"""REST ``POST /api/v1/events`` through the official ``stigg`` SDK, read back from Kafka."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

from stigg._client import Stigg

from byoc_platform.events import SCHEMA_VERSION, UsageEvent, record_key
from tests.stack_fixtures import Stack
from tests.streaming.ingest.harness import ApiProcess, KafkaReader, event_batches, unique


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

    keys = [record_key(env, alice), record_key(env, bob)]
    messages = events_reader.read(keys, lambda ms_: len(ms_) >= 2)
    assert len(messages) == 2, "one record per customer of the request"
    by_key = {m.key(): m for m in messages}
    for message in messages:
        batch = event_batches([message])[0]
        assert batch.v == SCHEMA_VERSION
        assert batch.environment == env
        assert before <= batch.receivedAt <= after
        # The record timestamp is the receive time, never the event time (openmeter #5005).
        assert message.timestamp()[1] == batch.receivedAt

    alice_batch = event_batches([by_key[record_key(env, alice)]])[0]
    assert alice_batch.events == [
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
    bob_batch = event_batches([by_key[record_key(env, bob)]])[0]
    assert bob_batch.events == [
        UsageEvent(
            customerId=bob,
            eventName="llm_tokens",
            idempotencyKey="b-1",
            timestamp=ms(datetime(2025, 3, 1, 10, 0, tzinfo=UTC)),
            dimensions={"model": "gpt", "tokens": 1500},
        )
    ]
    # Dimension types survive exactly: int stays int, bool stays bool.
    dims = alice_batch.events[0].dimensions
    assert type(dims["tokens"]) is int and type(dims["ok"]) is bool


def test_missing_timestamp_is_receive_time_and_naive_is_utc(
    infra: Stack, ingest_api: ApiProcess, events_reader: KafkaReader
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
    key = record_key(infra.settings.environment, customer)
    [batch] = event_batches(events_reader.read([key], lambda m: len(m) >= 1))
    assert before <= batch.events[0].timestamp <= after
    assert batch.events[0].timestamp == batch.receivedAt
    assert batch.events[1].timestamp == ms(datetime(2025, 6, 1, 8, 30, tzinfo=UTC))


def test_one_customers_events_keep_their_order_across_requests(
    infra: Stack, ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer = unique()
    client = sdk(ingest_api)
    for request in range(5):
        client.v1.events.report(
            events=[
                {"customer_id": customer, "event_name": "e", "idempotency_key": f"r{request}-{i}"}
                for i in range(3)
            ]
        )
    key = record_key(infra.settings.environment, customer)
    messages = events_reader.read([key], lambda m: len(m) >= 5)
    assert len({m.partition() for m in messages}) == 1, "one customer -> one partition"
    messages.sort(key=lambda m: m.offset())
    keys = [e.idempotencyKey for b in event_batches(messages) for e in b.events]
    assert keys == [f"r{r}-{i}" for r in range(5) for i in range(3)]


def test_same_idempotency_key_different_body_both_forwarded_first_first(
    infra: Stack, ingest_api: ApiProcess, events_reader: KafkaReader
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
    key = record_key(infra.settings.environment, customer)
    messages = sorted(events_reader.read([key], lambda m: len(m) >= 2), key=lambda m: m.offset())
    dims = [e.dimensions for b in event_batches(messages) for e in b.events]
    assert dims == [{"n": 1}, {"n": 2}]


def test_a_full_batch_of_1000_big_events_is_split_into_ordered_records(
    infra: Stack, ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer = unique()
    pad = "x" * 900  # ~1 KB per event: one customer's group exceeds one record's size cap
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
    key = record_key(infra.settings.environment, customer)

    def complete(messages: list) -> bool:
        return sum(len(b.events) for b in event_batches(messages)) >= 1000

    messages = sorted(events_reader.read([key], complete), key=lambda m: m.offset())
    assert len(messages) >= 2
    assert all(len(m.value()) <= 512 * 1024 for m in messages)
    order = [e.dimensions["i"] for b in event_batches(messages) for e in b.events]
    assert order == list(range(1000))
