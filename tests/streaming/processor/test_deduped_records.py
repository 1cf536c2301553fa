"""usage.deduped records: the events.py format, one record per input record, duplicates gone."""

from __future__ import annotations

from byoc_platform.events import (
    SCHEMA_VERSION,
    EventBatch,
    UsageEvent,
    decode_batch,
    encode_batch,
    record_key,
)
from streaming.engine import EngineConfig, StreamEngine
from streaming.processor.deduped import Accepted, deduped_records, records_for


def test_deduped_records_decode_as_event_batches_without_the_duplicates() -> None:
    engine = StreamEngine(EngineConfig())
    engine.assign(0)
    a1 = UsageEvent(
        customerId="a",
        eventName="tokens.used",
        idempotencyKey="a1",
        timestamp=1000,
        resourceId="ws",
        dimensions={"model": "m", "tokens": 3, "ratio": 0.5, "ok": True},
    )
    a2 = UsageEvent(customerId="a", eventName="api.call", idempotencyKey="a2", timestamp=1001)
    b1 = UsageEvent(customerId="b", eventName="api.call", idempotencyKey="b1", timestamp=1002)
    engine.process(0, 0, EventBatch(SCHEMA_VERSION, "prod", 5000, [a1, a2, a1]))
    engine.process(0, 1, EventBatch(SCHEMA_VERSION, "prod", 5001, [b1]))
    engine.process(0, 2, EventBatch(SCHEMA_VERSION, "prod", 5002, [a2]))  # all duplicates
    engine.process(0, 3, EventBatch(SCHEMA_VERSION, "test", 5003, [a2]))  # other environment
    records = deduped_records(engine.drain()[0].events)

    assert [(key, ts) for key, _, ts in records] == [
        (record_key("prod", "a"), 5000),
        (record_key("prod", "b"), 5001),
        (record_key("test", "a"), 5003),
    ]
    batches = [decode_batch(value) for _, value, _ in records]
    assert batches == [
        EventBatch(SCHEMA_VERSION, "prod", 5000, [a1, a2]),
        EventBatch(SCHEMA_VERSION, "prod", 5001, [b1]),
        EventBatch(SCHEMA_VERSION, "test", 5003, [a2]),
    ]


def test_records_whose_events_all_survived_are_republished_byte_for_byte() -> None:
    engine = StreamEngine(EngineConfig())
    engine.assign(0)
    whole = EventBatch(SCHEMA_VERSION, "prod", 5000, [a(1), a(2)])
    partial = EventBatch(SCHEMA_VERSION, "prod", 5001, [a(2), a(3)])  # a2 is a duplicate
    accepted = []
    counters = engine.engine(0).counters
    for offset, batch in enumerate([whole, partial]):
        before = counters.events
        engine.process(0, offset, batch)
        count = counters.events - before
        original = encode_batch(batch) if count == len(batch.events) else None
        accepted.append(Accepted(record_key("prod", "a"), original, batch.receivedAt, count))
    records = records_for(accepted, engine.drain()[0].events)

    assert records[0] == (record_key("prod", "a"), encode_batch(whole), 5000)
    assert decode_batch(records[1][1]) == EventBatch(SCHEMA_VERSION, "prod", 5001, [a(3)])


def a(n: int) -> UsageEvent:
    return UsageEvent(customerId="a", eventName="api.call", idempotencyKey=f"a{n}", timestamp=n)
