"""SIGKILL the processor at random points while it runs: ClickHouse ends with exactly the unique
events and the exact minute aggregates; nothing lost, nothing twice."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.stack_fixtures import Stack
from tests.streaming.processor.harness import (
    EventProducer,
    ProcessorProcess,
    consume_all,
    event_rows,
    expected_results,
    isolated_settings,
    late_hours,
    late_row_count,
    minute_aggregates,
    wait_checkpointed,
)
from tests.streaming.processor.workload import workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 400
EVENTS_PER_RECORD = 75  # 30k events in all
KILLS = 4


def test_sigkill_at_random_points_loses_nothing_and_writes_nothing_twice(
    infra: Stack, tmp_path: Path
) -> None:
    s = isolated_settings(infra.settings, tmp_path / "stream")
    environment = f"env-kill-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20261121)
    batches = list(workload(environment, RECORDS, EVENTS_PER_RECORD, seed=7))
    producer = EventProducer(s)

    # Produce at a steady pace in the background so the kills land mid-stream.
    def produce() -> None:
        for i, batch in enumerate(batches):
            producer.send(batch)
            if i % 20 == 19:
                time.sleep(0.4)

    feeder = threading.Thread(target=produce)
    feeder.start()
    fences_seen = 0
    runs = 0
    try:
        for _ in range(KILLS):
            proc = ProcessorProcess(s, name=f"run{runs}").start()
            runs += 1
            proc.wait_ready()
            time.sleep(rng.uniform(0.2, 2.5))  # a random point in its life
            assert proc.kill() == -9
            fences_seen += proc.log_text().count("of flush")
        feeder.join()
        produced = producer.flush()
        final = ProcessorProcess(s, name="final").start()
        final.wait_ready()
        wait_checkpointed(s, produced.end_offsets(), alive=final.check_alive)
        fences_seen += final.log_text().count("of flush")
        assert final.stop() == 0, final.log_tail()
    finally:
        feeder.join()

    expected = expected_results(produced)
    total_events = RECORDS * EVENTS_PER_RECORD
    assert expected.duplicates > total_events * 0.05  # the workload really has duplicates
    assert expected.late_events > 100  # ... and late events
    assert len(expected.unique) + expected.duplicates == total_events

    ch = infra.clickhouse()
    db = s.clickhouse.database
    final_rows = event_rows(ch, db, environment)
    assert len(final_rows) == len(expected.unique)
    by_key = {(r[0], r[1]): r for r in final_rows}
    for (_, customer, key), (event, _) in expected.unique.items():
        row = by_key[(customer, key)]
        assert row[2] == event.timestamp  # the FIRST occurrence was kept
        assert row[3].get("tokens") == float(event.dimensions["tokens"])
    # Not only FINAL: the raw table holds no replayed copy either (same tokens dropped them).
    assert len(event_rows(ch, db, environment, final=False)) == len(expected.unique)

    assert minute_aggregates(ch, db, environment) == expected.minutes
    assert late_row_count(ch, db, environment) == expected.late_events
    assert late_hours(ch, db, environment) == expected.late_hours

    # usage.deduped: every unique event at least once, nothing else (at-least-once delivery).
    published = consume_all(s, s.kafka.deduped_topic, expected_records=RECORDS)
    published_keys = [
        (b.environment, e.customerId, e.idempotencyKey) for b in published for e in b.events
    ]
    assert set(published_keys) == set(expected.unique)
    print(f"runs={runs + 1} replay fences hit={fences_seen} unique={len(expected.unique)}")
