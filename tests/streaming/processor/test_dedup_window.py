"""The dedup window (shortened to 5 s of receive time): a duplicate inside it is dropped, a key
seen again after it counts again, and expired state is really deleted (memory and disk)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent
from tests.stack_fixtures import Stack
from tests.streaming.processor.harness import (
    EventProducer,
    ProcessorProcess,
    consume_all,
    dedup_store_stats,
    isolated_settings,
    wait_checkpointed,
)

pytestmark = pytest.mark.integration

R0 = 1_793_700_000_000  # receive clock of the first record (ms)
WINDOW_S = 5.0


def _batch(environment: str, customer: str, received_at: int, keys: list[str]) -> EventBatch:
    events = [
        UsageEvent(
            customerId=customer, eventName="api.call", idempotencyKey=k, timestamp=received_at
        )
        for k in keys
    ]
    return EventBatch(SCHEMA_VERSION, environment, received_at, events)


def test_duplicate_inside_window_dropped_key_counts_again_after_and_state_expires(
    infra: Stack, tmp_path: Path
) -> None:
    s = isolated_settings(infra.settings, tmp_path / "stream", dedup_window_s=WINDOW_S)
    environment = f"env-window-{uuid.uuid4().hex[:8]}"
    customer = "cust-window"
    first = [f"k{i}" for i in range(10)]
    newer = [f"k{i}" for i in range(10, 15)]
    steps = [
        (R0, first),  # 10 new
        (R0 + 2000, first[:5] + newer),  # k0-4: duplicates 2 s later (inside) -> dropped
        (R0 + 6000, first[:5] + newer),  # k0-4: 6 s after first seen -> count again;
        #                                  k10-14: 4 s after first seen -> still duplicates
        (R0 + 60_000, ["k99"]),  # a minute later: everything before has expired
    ]
    counted = [10, 5, 5, 1]
    proc = ProcessorProcess(s).start()
    try:
        proc.wait_ready()
        producer = EventProducer(s)
        segments_after = []
        for received_at, keys in steps:
            producer.send(_batch(environment, customer, received_at, keys))
            produced = producer.flush()
            wait_checkpointed(s, produced.end_offsets(), alive=proc.check_alive)
            segments_after.append(dedup_store_stats(s))
        in_memory = proc.metric("byoc_stream_dedup_entries")
        duplicates = proc.metric("byoc_stream_duplicates_total")
        assert proc.stop() == 0
    finally:
        proc.stop()

    # On disk, one segment per checkpoint; expired ones are gone:
    # after step 3 the clock is R0+6000, so the segment of step 1 (newest R0) expired;
    # after step 4 (R0+60000) only k99's segment is left.
    assert segments_after[0] == (1, 10)
    assert segments_after[1] == (2, 15)
    assert segments_after[2] == (2, 10)
    assert segments_after[3] == (1, 1)
    assert in_memory == 1  # the engine evicted them too
    assert duplicates == 5 + 5

    ch = infra.clickhouse()
    db = s.clickhouse.database
    total = ch.query(
        f"SELECT sum(count) FROM {db}.usage_minute FINAL "
        "WHERE environment = {env:String} AND metric = ''",
        parameters={"env": environment},
    ).result_rows[0][0]
    assert total == sum(counted)

    published = consume_all(s, s.kafka.deduped_topic, expected_records=len(steps))
    seen = {(b.receivedAt, e.idempotencyKey) for b in published for e in b.events}
    assert seen == {
        *((R0, k) for k in first),
        *((R0 + 2000, k) for k in newer),
        *((R0 + 6000, k) for k in first[:5]),
        (R0 + 60_000, "k99"),
    }
