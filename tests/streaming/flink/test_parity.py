"""The Flink SQL job and the pure Python engine give identical rows on the shared fixture.

One job invocation (a local MiniCluster, spawned with the Flink environment's own Python)
processes every partition file of tests/fixtures/stream (session fixture ``flink_output``,
shared with test_clickhouse_ingest.py); the pure engine processes the same records,
early-firing snapshots along the way. Compared: the deduplicated events, the final
usage_minute state (highest version per key, as ReplacingMergeTree keeps it) and late_hours.
"""

from __future__ import annotations

import pytest
from flink_parity import (
    assert_events_identical,
    assert_late_hours_identical,
    assert_minutes_identical,
)
from stream_fixtures import final_minutes, load_partitions

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
