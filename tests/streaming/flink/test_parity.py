"""The Flink SQL job and the pure Python engine give identical rows on the shared fixture.

One job invocation (a local MiniCluster, spawned with the Flink environment's own Python)
processes every partition file of tests/fixtures/stream and the edge partition of edge/
(raw records the runtime API never writes: negative times, line-breaking characters, records
that are not EventBatches) (session fixture ``flink_output``, shared with
test_clickhouse_ingest.py); the pure engine processes the same records, early-firing
snapshots along the way, skipping what the processor dead-letters. Compared: the
deduplicated events, the final usage_minute state (highest version per key, as
ReplacingMergeTree keeps it) and late_hours; and the events the enforcement counters get: the
Flink job's usage_events rows, decoded by byoc_platform.events.decode_event_row (the feed
with stream.engine = "flink"), are the events the embedded processor publishes on
usage.deduped.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from edge_records import ENV as EDGE_ENV
from edge_records import LINE_BREAKING_LABEL
from flink_parity import (
    EDGE_DIR,
    assert_events_identical,
    assert_late_hours_identical,
    assert_minutes_identical,
    dead_lettered,
    part_files,
)
from stream_fixtures import final_minutes, load_partitions, partition_files

from byoc_platform.events import UsageEvent, decode_batch, decode_event_row, record_key
from streaming.engine import EngineConfig, PartitionEngine
from streaming.processor.deduped import Accepted, records_for

pytestmark = pytest.mark.slow


def test_deduplicated_events_are_identical(flink_rows, python_rows) -> None:
    assert_events_identical(flink_rows["usage_events"], python_rows["usage_events"])


def test_usage_minute_final_state_is_identical(flink_rows, python_rows) -> None:
    assert_minutes_identical(flink_rows["usage_minute"], python_rows["usage_minute"])


def test_late_hours_are_identical(flink_rows, python_rows) -> None:
    assert_late_hours_identical(flink_rows["late_hours"], python_rows["late_hours"])


def test_fixture_exercises_every_case(python_rows) -> None:
    """Guards the fixture itself: parity over a trivial fixture would prove little."""
    minutes = final_minutes(python_rows["usage_minute"]).values()
    events = python_rows["usage_events"]
    records = sum(len(b.events) for recs in load_partitions().values() for _, b in recs)
    assert records - len(events) >= 50  # duplicates were dropped
    late = [m for m in minutes if m["late_key"]]
    assert len({m["late_key"] for m in late}) >= 50
    assert len({(m["environment"], m["minute"] // 3_600_000) for m in late}) >= 3  # hours
    assert {m["metric"] for m in minutes} >= {"", "tokens", "units", "cost", "big", "tiny"}
    assert {e["resource_id"] for e in events} >= {"", "ws-1", "doc-9"}
    assert len({m["dimensions_key"] for m in minutes}) >= 6
    assert any(m["count"] > 1 and m["metric"] == "" and not m["late_key"] for m in minutes)
    tricky = next(e for e in events if e["idempotency_key"] == "b-1")
    assert tricky["labels"]["region"] == 'eu "west", 1: {x}'
    assert tricky["labels"]["flag"] == "true" and tricky["values"]["tiny"] == 1e-07


def exact(environment: str, event: UsageEvent) -> bytes:
    """One event as comparable text: unlike ==, tells 3 from 3.0 from true."""
    return msgspec.json.encode([environment, event], order="sorted")


def processor_deduped_records() -> list[bytes]:
    """The usage.deduped record values the embedded processor publishes for the fixture: the
    engine per partition, and per record what streaming/processor/processor.py accepts
    (the original bytes when every event survived, else the survivors re-encoded)."""
    values: list[bytes] = []
    files = {**partition_files(), **partition_files(EDGE_DIR)}
    for partition, path in files.items():
        engine = PartitionEngine(partition, EngineConfig())
        accepted: list[Accepted] = []
        for offset, value in enumerate(path.read_bytes().split(b"\n")[:-1]):
            if dead_lettered(value):
                assert engine.take_offset(offset)
                continue
            batch = decode_batch(value)
            before = engine.counters.events
            assert engine.process(offset, batch)
            count = engine.counters.events - before
            if count:
                whole = value if count == len(batch.events) else None
                key = record_key(batch.environment, batch.events[0].customerId)
                accepted.append(Accepted(key, whole, batch.receivedAt, count))
        values += [v for _, v, _ in records_for(accepted, engine.flush_all().events)]
    return values


def test_flink_rows_decode_to_the_events_the_processor_publishes(flink_output: Path) -> None:
    """What enforcement counts with stream.engine = "flink" (the job's usage_events rows) is
    what it counts with the embedded engine (usage.deduped), dimension types included."""
    rows = [
        line
        for part in part_files(flink_output / "usage_events")
        for line in part.read_bytes().split(b"\n")
        if line
    ]
    flink = sorted(exact(*decode_event_row(row)) for row in rows)
    published = [decode_batch(value) for value in processor_deduped_records()]
    python = sorted(exact(b.environment, e) for b in published for e in b.events)
    assert len(flink) == len(rows) == len(python)
    assert flink == python, sorted(set(flink) ^ set(python))[:4]
    # the cases that matter for the counters are in there
    events = [e for b in published for e in b.events]
    kinds = {type(v) for e in events for v in e.dimensions.values()}
    assert kinds == {int, float, str, bool}
    assert any(not e.dimensions for e in events)
    assert {e.resourceId is None for e in events} == {True, False}


def test_edge_partition_is_processed_past_records_that_are_not_event_batches(flink_rows) -> None:
    """The job drops the rows of records the processor dead-letters (no key, no time: a nested
    object in dimensions, no idempotencyKey, a string timestamp, no receivedAt) and goes on:
    a null event time used to fail the job for ever, two null keys to be deduplicated into
    one event. The parity tests above compare the rest; this names what must be there."""
    events = {
        e["idempotency_key"]: e for e in flink_rows["usage_events"] if e["environment"] == EDGE_ENV
    }
    assert events.keys() == {"neg-1", "neg-2", "zero", "neg-3", "lines", "after"}
    assert events["lines"]["labels"] == {"note": LINE_BREAKING_LABEL}


def test_negative_event_times_are_floored_to_their_minute_and_hour(flink_rows) -> None:
    """SQL's MOD truncates toward zero; the Python engine floors (t - t % unit)."""
    minutes = final_minutes(r for r in flink_rows["usage_minute"] if r["environment"] == EDGE_ENV)
    starts = {(m["minute"], m["late_key"]) for m in minutes.values() if m["metric"] == ""}
    assert {(-120_000, ""), (-60_000, ""), (0, ""), (-3_660_000, "neg-3")} <= starts
    hours = {r["hour"] for r in flink_rows["late_hours"] if r["environment"] == EDGE_ENV}
    # Floored hours: the late -3,660,000 in -7,200,000, -120,000 in -3,600,000; every edge
    # event was received long after its hour ended, so each hour is recorded (F73).
    assert hours == {-7_200_000, -3_600_000, 0}
