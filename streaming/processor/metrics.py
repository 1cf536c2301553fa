"""Prometheus metrics of the stream processor (served on /metrics of settings.ports.stream)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "byoc_stream_records", "Kafka records consumed from usage.events", registry=r
        )
        self.bad_records = Counter(
            "byoc_stream_bad_records",
            "Records that are not EventBatch JSON (skipped, logged)",
            registry=r,
        )
        self.reports_loaded = Counter(
            "byoc_stream_reports_loaded",
            "Usage reports from usage.reports inserted into usage_reports (offsets committed)",
            registry=r,
        )
        self.reports_skipped = Counter(
            "byoc_stream_reports_bad_records",
            "usage.reports records that are not UsageReportBatch JSON (skipped, logged)",
            registry=r,
        )
        self.events = Counter(
            "byoc_stream_events", "Unique events accepted (first occurrences)", registry=r
        )
        self.duplicates = Counter(
            "byoc_stream_duplicates", "Events dropped as duplicates inside the window", registry=r
        )
        self.late = Counter(
            "byoc_stream_late_events",
            "Events behind the watermark (stored as late rows, hour marked for re-rollup)",
            registry=r,
        )
        self.rows_written = Counter(
            "byoc_stream_rows_written", "Rows inserted into ClickHouse", ["table"], registry=r
        )
        self.events_durable = Counter(
            "byoc_stream_events_durable",
            "Unique events whose rows are durable in ClickHouse and checkpointed",
            registry=r,
        )
        self.deduped_published = Counter(
            "byoc_stream_deduped_records",
            "Records acknowledged on usage.deduped",
            registry=r,
        )
        self.write_retries = Counter(
            "byoc_stream_write_retries", "Retried ClickHouse inserts", ["table"], registry=r
        )
        self.offset_gaps = Counter(
            "byoc_stream_offset_gaps",
            "Records that arrived past the next expected offset (re-fetched once from it)",
            registry=r,
        )
        self.fenced = Counter(
            "byoc_stream_fenced_partitions",
            "Partitions found owned by another instance at checkpoint time",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "byoc_stream_batch_seconds",
            "Latency of one flush: drain to checkpoint committed",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "byoc_stream_write_stage_seconds",
            "Time of each step of a flush on the writer thread",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.batch_events = Histogram(
            "byoc_stream_batch_events",
            "Unique events per flush",
            buckets=(0, 10, 100, 1000, 5000, 10_000, 20_000, 50_000, 100_000),
            registry=r,
        )
        self.assigned = Gauge(
            "byoc_stream_assigned_partitions", "Partitions this instance owns", registry=r
        )
        self.checkpoint_lag = Gauge(
            "byoc_stream_checkpoint_lag_records",
            "Records consumed but not yet covered by a committed checkpoint",
            ["partition"],
            registry=r,
        )
        self.checkpoint_offset = Gauge(
            "byoc_stream_checkpoint_offset",
            "Next offset stored in the partition's checkpoint",
            ["partition"],
            registry=r,
        )
        self.checkpoint_received_at = Gauge(
            "byoc_stream_checkpoint_received_at_seconds",
            "Receive time of the newest record covered by the partition's checkpoint",
            ["partition"],
            registry=r,
        )
        self.dedup_entries = Gauge(
            "byoc_stream_dedup_entries", "Live dedup keys in memory", ["partition"], registry=r
        )
        self.open_windows = Gauge(
            "byoc_stream_open_windows", "Open 1-minute windows", ["partition"], registry=r
        )

    def forget_partition(self, partition: int) -> None:
        label = str(partition)
        for gauge in (
            self.checkpoint_lag,
            self.checkpoint_offset,
            self.checkpoint_received_at,
            self.dedup_entries,
            self.open_windows,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(label)
