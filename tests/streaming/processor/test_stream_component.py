"""`byoc stream` as the stack supervisor runs it: health, readiness, metrics, a bad record
skipped without harm, and a clean exit on SIGTERM with everything checkpointed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from byoc_platform import clients
from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent, encode_batch, record_key
from byoc_platform.stack.supervisor import Supervisor
from tests.stack_fixtures import Stack, free_port
from tests.streaming.processor.harness import http_get, isolated_settings, wait_checkpointed

pytestmark = pytest.mark.integration


def test_supervised_processor_is_ready_skips_a_bad_record_and_stops_cleanly(
    infra: Stack, tmp_path: Path
) -> None:
    s = isolated_settings(infra.settings, tmp_path / "stack")
    environment = f"env-comp-{uuid.uuid4().hex[:8]}"
    base = f"http://{s.host}:{s.ports.stream}"
    supervisor = Supervisor(s, ["stream"], restart=False)
    supervisor.start()  # returns once /healthz answers
    try:
        process = supervisor.running["stream"].process
        deadline = time.monotonic() + 60
        while http_get(f"{base}/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = http_get(f"{base}/readyz")
        assert status == 200, body
        assert json.loads(body)["partitions"] == [0, 1, 2, 3]
        assert http_get(f"{base}/healthz")[0] == 200

        producer = Producer(clients.producer_config(s))
        key = record_key(environment, "cust")
        event = UsageEvent(customerId="cust", eventName="api.call", idempotencyKey="k", timestamp=1)
        offsets: dict[int, int] = {}

        def delivered(err: object, msg: object) -> None:
            offsets[msg.partition()] = msg.offset() + 1  # type: ignore[attr-defined]

        now_ms = int(time.time() * 1000)
        for received_ms, value, kafka_time_ms in (
            (now_ms, None, now_ms),
            # A bad record stamped 8 days ahead: skipping it must move nothing but the offset
            # (it used to move the receive clock, evicting the 7-day dedup window).
            (None, b"{not json", now_ms + 8 * 86_400_000),
            (now_ms + 1000, None, now_ms + 1000),  # a retry of the event: a duplicate
        ):
            if value is None:
                assert received_ms is not None
                batch = EventBatch(SCHEMA_VERSION, environment, received_ms, [event])
                value = encode_batch(batch)
            producer.produce(
                s.kafka.events_topic,
                key=key,
                value=value,
                timestamp=kafka_time_ms,
                on_delivery=delivered,
            )
        assert producer.flush(30) == 0
        wait_checkpointed(s, offsets)

        _, metrics = http_get(f"{base}/metrics")
        assert "byoc_stream_bad_records_total 1.0" in metrics
        assert "byoc_stream_events_durable_total 1.0" in metrics
        assert "byoc_stream_duplicates_total 1.0" in metrics
        assert 'byoc_stream_rows_written_total{table="usage_events"} 1.0' in metrics
    finally:
        supervisor.stop()
    assert process.returncode == 0
    ch = infra.clickhouse()
    rows = ch.query(
        f"SELECT idempotency_key FROM {s.clickhouse.database}.usage_events "
        "WHERE environment = {env:String}",
        parameters={"env": environment},
    ).result_rows
    assert rows == [("k",)]


def test_stopped_while_waiting_for_kafka_it_exits_0(tmp_path: Path) -> None:
    # The documented contract (streaming/cli.py): SIGTERM -> exit 0; it used to re-raise the
    # last connection error and exit 1 with a traceback when Kafka had never been reached.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env.update(
        {
            "BYOC_DATA_DIR": str(tmp_path),
            "BYOC_PORTS__KAFKA": str(free_port()),  # nothing listens there
            "BYOC_PORTS__CLICKHOUSE": str(free_port()),
            "BYOC_PORTS__STREAM": str(free_port()),
        }
    )
    log_path = tmp_path / "stream.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "byoc_platform", "stream"], stdout=out, stderr=out, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while "waiting for Kafka and ClickHouse" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
