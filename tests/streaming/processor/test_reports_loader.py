"""usage.reports -> usage_reports (streaming/processor/reports.py), on the real broker and
warehouse: field by field, at-least-once collapsing under FINAL, bad records skipped, late
hours marked, and hosted by the stream processor as `byoc up` runs it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from byoc_platform import clients
from byoc_platform.events import (
    SCHEMA_VERSION,
    UsageReport,
    UsageReportBatch,
    encode_report_batch,
    record_key,
)
from byoc_platform.settings import Settings
from byoc_platform.stack.supervisor import Supervisor
from streaming.processor.metrics import ProcessorMetrics
from streaming.processor.reports import ReportsLoader, reports_group
from tests.stack_fixtures import Stack, free_port
from tests.streaming.processor.harness import http_get, isolated_settings

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hour_of(ms: int) -> int:
    return ms - ms % HOUR_MS


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} in {timeout_s}s"
        time.sleep(0.1)


class ReportProducer:
    """Records as the ingestion and enforcement producers write them: one environment and
    customer per record, keyed with record_key, stamped with the receive time."""

    def __init__(self, s: Settings) -> None:
        self.topic = s.kafka.reports_topic
        self.producer = Producer(clients.producer_config(s))
        self.offsets: dict[int, int] = {}  # partition -> next offset

    def send(self, environment: str, received: int, reports: list[UsageReport]) -> None:
        value = encode_report_batch(
            UsageReportBatch(SCHEMA_VERSION, environment, received, reports)
        )
        self.send_raw(record_key(environment, reports[0].customerId), value, received)

    def send_raw(self, key: bytes, value: bytes, timestamp: int) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            self.offsets[msg.partition()] = msg.offset() + 1

        self.producer.produce(
            self.topic, key=key, value=value, timestamp=timestamp, on_delivery=delivered
        )
        assert self.producer.flush(30) == 0


def running_loader(s: Settings) -> ReportsLoader:
    loader = ReportsLoader(s, ProcessorMetrics(), f"test-{uuid.uuid4().hex[:6]}")
    loader.start()
    return loader


def sample(loader: ReportsLoader, name: str, **labels: str) -> float:
    return loader.metrics.registry.get_sample_value(name, labels) or 0.0


def load(s: Settings, reports: int) -> ReportsLoader:
    """A loader run until it has loaded (and committed) ``reports`` reports, then stopped."""
    loader = running_loader(s)
    try:
        wait_for(lambda: loader.loaded >= reports or loader.error is not None, "loaded")
    finally:
        loader.stop()
    assert loader.error is None
    return loader


def committed(s: Settings) -> dict[int, int]:
    consumer = Consumer(clients.consumer_config(s, reports_group(s)))
    try:
        partitions = [TopicPartition(s.kafka.reports_topic, p) for p in range(s.kafka.partitions)]
        offsets = consumer.committed(partitions, timeout=10)
        return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}  # none: negative
    finally:
        consumer.close()


def stored(ch: Any, s: Settings, environment: str) -> list[tuple]:
    return ch.query(
        "SELECT customer_id, resource_id, feature_id, report_id, value, update_behavior, "
        "idempotency_key, toUnixTimestamp64Milli(report_time), "
        "toUnixTimestamp64Milli(received_at), dimensions "
        f"FROM {s.clickhouse.database}.usage_reports FINAL WHERE environment = {{env:String}} "
        "ORDER BY report_id, received_at",
        parameters={"env": environment},
    ).result_rows


def late_hours(ch: Any, s: Settings, environment: str) -> dict[int, int]:
    """hour (ms) -> recorded_at (ms) of the environment's late_hours rows."""
    rows = ch.query(
        "SELECT toUnixTimestamp(hour) * 1000, toUnixTimestamp64Milli(recorded_at) "
        f"FROM {s.clickhouse.database}.late_hours FINAL WHERE environment = {{env:String}}",
        parameters={"env": environment},
    ).result_rows
    return {int(h): int(r) for h, r in rows}


@pytest.fixture
def settings(infra: Stack, tmp_path: Path) -> Iterator[Settings]:
    yield isolated_settings(infra.settings, tmp_path / "stream", partitions=2)


def report(report_id: str, customer: str, created: int, **fields: Any) -> UsageReport:
    base: dict[str, Any] = {"featureId": "feature-seats", "value": 1.0, "updateBehavior": "DELTA"}
    return UsageReport(id=report_id, customerId=customer, createdAt=created, **(base | fields))


def test_reports_land_field_by_field(infra: Stack, settings: Settings) -> None:
    environment = f"env-rep-{uuid.uuid4().hex[:8]}"
    received = now_ms()
    created = hour_of(received) + (received - hour_of(received)) // 2  # same hour, earlier
    delta = report(
        "m-delta",
        "cust-a",
        created,
        value=12.34567,
        resourceId="ws-1",
        idempotencyKey="idem-1",
        dimensions={"tokens": 120, "model": "gpt-4", "ratio": 0.5, "cached": True},
    )
    set_ = report(
        "m-set", "cust-b", received, featureId="feature-storage", value=40.0, updateBehavior="SET"
    )
    producer = ReportProducer(settings)
    producer.send(environment, received, [delta])
    producer.send(environment, received + 7, [set_])

    loader = load(settings, 2)

    ch = infra.clickhouse()
    assert stored(ch, settings, environment) == [
        (
            "cust-a",
            "ws-1",
            "feature-seats",
            "m-delta",
            12.34567,
            "DELTA",
            "idem-1",
            created,
            received,
            '{"cached":true,"model":"gpt-4","ratio":0.5,"tokens":120}',
        ),
        (
            "cust-b",
            "",
            "feature-storage",
            "m-set",
            40.0,
            "SET",
            "",
            received,
            received + 7,
            "{}",
        ),
    ]
    assert (loader.loaded, loader.skipped) == (2, 0)
    assert late_hours(ch, settings, environment) == {}  # both in the hour they arrived


def test_a_record_read_twice_leaves_one_row_per_receipt(infra: Stack, settings: Settings) -> None:
    environment = f"env-twice-{uuid.uuid4().hex[:8]}"
    received = now_ms()
    producer = ReportProducer(settings)
    producer.send(environment, received, [report("m-1", "cust-a", received)])
    producer.send(environment, received + 1, [report("m-2", "cust-b", received, value=2.0)])
    # The same id logged again (a retried call) is a receipt of its own, not a duplicate.
    producer.send(environment, received + 2, [report("m-1", "cust-a", received)])
    load(settings, 3)
    assert committed(settings) == producer.offsets  # at-least-once: committed after the rows
    producer.send(environment, received + 3, [report("m-3", "cust-a", received, value=3.0)])

    # Another group reads everything again from offset 0, in other batches than the first
    # (other dedup tokens): the rows collapse on their sorting key.
    again = settings.model_copy(deep=True)
    again.stream.consumer_group += "-again"
    assert load(again, 4).loaded == 4

    rows = stored(infra.clickhouse(), settings, environment)
    assert [(r[0], r[3], r[8]) for r in rows] == [
        ("cust-a", "m-1", received),
        ("cust-a", "m-1", received + 2),
        ("cust-b", "m-2", received + 1),
        ("cust-a", "m-3", received + 3),
    ]


def test_a_loader_stopped_before_its_commit_leaves_the_batch_to_the_next(
    infra: Stack, settings: Settings
) -> None:
    environment = f"env-abandon-{uuid.uuid4().hex[:8]}"
    received = now_ms()
    ReportProducer(settings).send(environment, received, [report("m-1", "cust-a", received)])
    down = settings.model_copy(deep=True)
    down.clickhouse.url = f"http://127.0.0.1:{free_port()}"  # nothing listens: inserts fail
    loader = running_loader(down)
    try:
        retries = "byoc_stream_write_retries_total"
        wait_for(lambda: sample(loader, retries, table="usage_reports") > 0, "retrying")
    finally:
        loader.stop(timeout_s=1.0)  # gives the batch up, uncommitted
    assert not loader.alive and loader.error is None and loader.loaded == 0

    assert load(settings, 1).loaded == 1  # same group: the batch again
    assert [r[3] for r in stored(infra.clickhouse(), settings, environment)] == ["m-1"]


def test_an_undecodable_record_is_skipped_between_two_good_ones(
    infra: Stack, settings: Settings
) -> None:
    environment = f"env-bad-{uuid.uuid4().hex[:8]}"
    received = now_ms()
    key = record_key(environment, "cust-a")  # one partition, in this order
    producer = ReportProducer(settings)
    producer.send(environment, received, [report("m-1", "cust-a", received)])
    producer.send_raw(key, b"{not json", received)
    producer.send_raw(key, b'{"v":1,"environment":"\xff"}', received)  # invalid UTF-8
    producer.send(environment, received + 1, [report("m-2", "cust-a", received)])

    loader = load(settings, 2)

    assert [r[3] for r in stored(infra.clickhouse(), settings, environment)] == ["m-1", "m-2"]
    assert (loader.loaded, loader.skipped) == (2, 2)
    assert sample(loader, "byoc_stream_reports_bad_records_total") == 2
    assert "undecodable record skipped" in (loader.status()["error"] or "")


def test_a_back_dated_report_marks_its_hour_for_a_rollup(infra: Stack, settings: Settings) -> None:
    environment = f"env-late-{uuid.uuid4().hex[:8]}"
    received = now_ms()
    back_dated = received - 2 * HOUR_MS
    producer = ReportProducer(settings)
    producer.send(environment, received, [report("m-late", "cust-a", back_dated)])
    producer.send(environment, received, [report("m-on-time", "cust-b", received)])

    load(settings, 2)

    ch = infra.clickhouse()
    marked = late_hours(ch, settings, environment)
    assert list(marked) == [hour_of(back_dated)]  # not the on-time report's hour
    # Stamped when written (encode_late_hours), never before the report was received.
    assert marked[hour_of(back_dated)] >= received
    assert [r[7] for r in stored(ch, settings, environment)] == [back_dated, received]


def test_the_stream_processor_loads_reports_and_stops_cleanly(
    infra: Stack, settings: Settings
) -> None:
    environment = f"env-proc-{uuid.uuid4().hex[:8]}"
    base = f"http://{settings.host}:{settings.ports.stream}"
    supervisor = Supervisor(settings, ["stream"], restart=False)
    supervisor.start()
    try:
        process = supervisor.running["stream"].process
        received = now_ms()
        producer = ReportProducer(settings)
        producer.send(environment, received, [report("m-1", "cust-a", received)])
        producer.send_raw(record_key(environment, "cust-a"), b"{not json", received)
        ch = infra.clickhouse()
        wait_for(lambda: len(stored(ch, settings, environment)) == 1, "loaded")
        wait_for(
            lambda: json.loads(http_get(f"{base}/healthz")[1])["reports"]["loaded"] == 1, "counted"
        )
        status, body = http_get(f"{base}/healthz")
        assert status == 200, body
        health = json.loads(body)["reports"]
        assert (health["alive"], health["loaded"], health["skipped"]) == (True, 1, 1)
        _, metrics = http_get(f"{base}/metrics")
        assert "byoc_stream_reports_loaded_total 1.0" in metrics
        assert "byoc_stream_reports_bad_records_total 1.0" in metrics
        assert 'byoc_stream_rows_written_total{table="usage_reports"} 1.0' in metrics
    finally:
        supervisor.stop()
    assert process.returncode == 0
    assert [r[3] for r in stored(infra.clickhouse(), settings, environment)] == ["m-1"]
    # Both records committed under the loader's group before it left.
    assert committed(settings) == producer.offsets
