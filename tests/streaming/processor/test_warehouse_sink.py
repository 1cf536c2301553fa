"""Rows reach ClickHouse with exact values, and a block re-sent with its token is dropped."""

from __future__ import annotations

import threading
import time
import uuid

import msgspec
import pytest

from byoc_platform import clients
from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent
from streaming.engine import (
    EVENT_COLUMNS,
    LATE_HOUR_COLUMNS,
    MINUTE_COLUMNS,
    EngineConfig,
    LateHourRow,
    StreamEngine,
)
from streaming.processor.warehouse_sink import (
    LATE_HOURS_TABLE,
    TABLES,
    WarehouseSink,
    dedup_token,
    encode_late_hours,
)
from tests.stack_fixtures import Stack

pytestmark = pytest.mark.integration

T = 1_793_613_481_123  # ms, deliberately not a whole second


def real_sink(infra: Stack) -> WarehouseSink:
    """A sink writing to the test stack's warehouse, as the processor's."""
    s = infra.settings
    return WarehouseSink(
        lambda: clients.clickhouse(s, compress=False, autogenerate_session_id=False),
        s.clickhouse.database,
        threading.Event(),
    )


def test_each_table_is_written_with_its_row_columns() -> None:
    assert {table: columns for table, columns, _ in TABLES} == {
        "usage_events": EVENT_COLUMNS,
        "usage_minute": MINUTE_COLUMNS,
        "late_hours": LATE_HOUR_COLUMNS,
    }


def test_rows_round_trip_exactly_and_a_resent_block_is_dropped(infra: Stack) -> None:
    environment = f"env-sink-{uuid.uuid4().hex[:8]}"
    engine = StreamEngine(EngineConfig())
    engine.assign(0)
    on_time = UsageEvent(
        customerId="c1",
        eventName="tokens.used",
        idempotencyKey="k1",
        timestamp=T,
        resourceId="ws-1",
        dimensions={"model": "gpt-4", "tokens": 120, "latency_ms": 12.5, "cached": False},
    )
    later = UsageEvent(
        customerId="c1", eventName="tokens.used", idempotencyKey="k2", timestamp=T + 600_000
    )
    late = UsageEvent(
        customerId="c1", eventName="tokens.used", idempotencyKey="k3", timestamp=T - 7
    )
    engine.process(0, 0, EventBatch(SCHEMA_VERSION, environment, T + 5, [on_time]))
    engine.process(0, 1, EventBatch(SCHEMA_VERSION, environment, T + 600_005, [later, late]))
    output = engine.drain()[0]
    assert output.events and output.minutes and output.late_hours

    s = infra.settings
    db = s.clickhouse.database
    sink = real_sink(infra)
    topic = f"sink-test-{uuid.uuid4().hex}"
    rows_of = {
        "usage_events": output.events,
        "usage_minute": output.minutes,
        "late_hours": output.late_hours,
    }
    for _ in range(2):  # the second round is a retry/replay: same tokens
        for table, columns, encode in TABLES:
            sink.insert(table, columns, encode(rows_of[table]), dedup_token(topic, "0:0-1", table))

    ch = infra.clickhouse()
    events = ch.query(
        "SELECT idempotency_key, resource_id, toUnixTimestamp64Milli(event_time), "
        "toUnixTimestamp64Milli(ingest_time), labels, `values`, dimensions "
        f"FROM {db}.usage_events WHERE environment = {{env:String}} ORDER BY idempotency_key",
        parameters={"env": environment},
    ).result_rows
    assert events == [
        (
            "k1",
            "ws-1",
            T,
            T + 5,
            {"model": "gpt-4", "cached": "false"},
            {"tokens": 120.0, "latency_ms": 12.5},
            '{"cached":false,"latency_ms":12.5,"model":"gpt-4","tokens":120}',
        ),
        ("k2", "", T + 600_000, T + 600_005, {}, {}, "{}"),
        ("k3", "", T - 7, T + 600_005, {}, {}, "{}"),
    ]
    minutes = ch.query(
        "SELECT toUnixTimestamp(minute), metric, late_key, count, sum, min, max, "
        "toUnixTimestamp64Milli(first_event_time), toUnixTimestamp64Milli(last_event_time), "
        f"version, dimensions_key FROM {db}.usage_minute "
        "WHERE environment = {env:String} ORDER BY minute, late_key, metric",
        parameters={"env": environment},
    ).result_rows
    window = (T - T % 60_000) // 1000
    labels_key = '{"cached":"false","model":"gpt-4"}'
    assert minutes == [
        (window, "", "", 1, 1.0, 1.0, 1.0, T, T, 1, labels_key),
        (window, "latency_ms", "", 1, 12.5, 12.5, 12.5, T, T, 1, labels_key),
        (window, "tokens", "", 1, 120.0, 120.0, 120.0, T, T, 1, labels_key),
        (window, "", "k3", 1, 1.0, 1.0, 1.0, T - 7, T - 7, 1, "{}"),
        (window + 600, "", "", 1, 1.0, 1.0, 1.0, T + 600_000, T + 600_000, 1, "{}"),
    ]
    hours = ch.query(
        "SELECT toUnixTimestamp(hour), toUnixTimestamp64Milli(recorded_at) "
        f"FROM {db}.late_hours FINAL WHERE environment = {{env:String}}",
        parameters={"env": environment},
    ).result_rows
    # late_hours keeps no insert tokens; its ReplacingMergeTree key collapses the resent row,
    # recorded when written (test_late_hours_rows_are_recorded_when_written).
    assert [h for h, _ in hours] == [(T - 7 - (T - 7) % 3_600_000) // 1000]
    assert hours[0][1] >= T + 600_005


def test_late_hours_rows_are_recorded_when_written(infra: Stack) -> None:
    """recorded_at is stamped at the insert, never earlier than the receive time: a row
    written after another of its (environment, hour) with an older receive time (a replay
    after a crash) must not be hidden under FINAL from the late-events sensor."""
    environment = f"env-late-{uuid.uuid4().hex[:8]}"
    s = infra.settings
    db = s.clickhouse.database
    sink = real_sink(infra)
    hour = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
    rows = [LateHourRow(environment, hour, hour + 5)]
    before = time.time_ns() // 1_000_000
    sink.insert(LATE_HOURS_TABLE, LATE_HOUR_COLUMNS, encode_late_hours(rows), "t1")
    stored = (
        infra.clickhouse()
        .query(
            "SELECT toUnixTimestamp64Milli(recorded_at) "
            f"FROM {db}.late_hours FINAL WHERE environment = {{env:String}}",
            parameters={"env": environment},
        )
        .result_rows
    )
    assert stored == [(stored[0][0],)] and stored[0][0] >= before  # not the old receive time
    # Never earlier than the receive time (not inserted: a future row would move the shared
    # table's sensor cursors ahead).
    future = time.time_ns() // 1_000_000 + 3_600_000
    encoded = encode_late_hours([LateHourRow(environment, hour, future)])
    assert msgspec.json.decode(encoded)[2] == future / 1000
