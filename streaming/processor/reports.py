"""Aggregated usage into the warehouse: ``usage.reports`` -> ClickHouse ``usage_reports``.

REST ``/api/v2/usage``, GraphQL ``reportUsage`` and gRPC ``ReportUsage`` log their reports to
``settings.kafka.reports_topic`` (UsageReportBatch records, byoc_platform/events.py); the
hourly rollup bills them from ``usage_reports``. With the embedded engine the stream processor
hosts this loader (with Flink, ClickHouse ingests the topic itself: warehouse_cluster.py).

One thread, its own consumer group (``<stream.consumer_group>-reports``: the instances of the
processor split the topic's partitions). Per consumed batch:

1. decode each record; an undecodable one (or one whose rows cannot be encoded) is logged
   and skipped, never retried: it would block the partition forever;
2. insert the reports' rows, then the ``late_hours`` rows, through the :class:`WarehouseSink`
   (retried until they land, with a dedup token naming the batch's offset ranges). Reports
   first: the rollup sensor re-rolls a late hour from ``usage_reports``, which must hold the
   report by then;
3. commit the batch's offsets, synchronously.

At-least-once: a crash (or a lost commit) before step 3 reads the batch again. Its rows are
the same (a pure function of the records) with the same sorting key (environment, customer_id,
report_id, received_at), so they collapse in the ReplacingMergeTree even when the batch is cut
differently the second time and the token differs.

A report whose hour (``createdAt`` floored to the hour) is before the hour of its batch's
``receivedAt`` arrived after its hour ended, when the hour's rollup may have run: its hour goes
to ``late_hours``, the rule the stream engine applies to events (streaming/engine/partition.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import msgspec

from byoc_platform import clients
from byoc_platform.events import UsageReportBatch, decode_report_batch
from byoc_platform.settings import Settings
from byoc_platform.warehouse_schema import USAGE_REPORTS_COLUMNS
from streaming.engine import LATE_HOUR_COLUMNS, LateHourRow
from streaming.engine.dimensions import SORTED_ENCODER
from streaming.engine.partition import HOUR_MS
from streaming.processor.errors import Aborted
from streaming.processor.metrics import ProcessorMetrics
from streaming.processor.warehouse_sink import (
    LATE_HOURS_TABLE,
    WarehouseSink,
    dedup_token,
    encode_late_hours,
    job_key,
)

log = logging.getLogger(__name__)

REPORTS_TABLE = "usage_reports"
CONSUME_BATCH = 1000
CONSUME_WAIT_S = 0.5
FETCH_WAIT_MS = 50  # as the processor's consumer (Tansu holds a fetch for the whole wait)

_encoder = msgspec.json.Encoder()


def reports_group(settings: Settings) -> str:
    """The loader's consumer group: the processor's, suffixed (its own committed offsets)."""
    return f"{settings.stream.consumer_group}-reports"


def report_rows(batch: UsageReportBatch) -> bytes:
    """JSONCompactEachRow lines in USAGE_REPORTS_COLUMNS order (times as epoch seconds, as
    warehouse_sink's encoders write them; dimensions as JSON text with sorted keys, like
    ``usage_events.dimensions``)."""
    env, received = batch.environment, batch.receivedAt / 1000
    return _encoder.encode_lines(
        [
            (
                env,
                r.customerId,
                r.resourceId or "",
                r.featureId,
                r.id,
                r.value,
                r.updateBehavior,
                r.idempotencyKey or "",
                r.createdAt / 1000,
                received,
                SORTED_ENCODER.encode(r.dimensions).decode(),
            )
            for r in batch.usages
        ]
    )


def late_hour_rows(batch: UsageReportBatch) -> list[LateHourRow]:
    """One row per hour of the batch's environment that ended before the batch was received."""
    received_hour = batch.receivedAt - batch.receivedAt % HOUR_MS
    hours = {r.createdAt - r.createdAt % HOUR_MS for r in batch.usages}
    return [
        LateHourRow(batch.environment, hour, batch.receivedAt)
        for hour in sorted(hours)
        if hour < received_hour
    ]


@dataclass
class _Batch:
    """The rows of one consumed batch and the offset range it covers per partition."""

    reports: list[bytes] = field(default_factory=list)
    report_count: int = 0
    late_hours: dict[tuple[str, int], LateHourRow] = field(default_factory=dict)
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)

    def cover(self, partition: int, offset: int) -> None:
        first, last = self.ranges.get(partition, (offset, offset))
        self.ranges[partition] = (min(first, offset), max(last, offset))

    def add(self, batch: UsageReportBatch, rows: bytes, late: list[LateHourRow]) -> None:
        self.reports.append(rows)
        self.report_count += len(batch.usages)
        for row in late:  # newest receive time per hour, as the engine keeps it
            known = self.late_hours.get((row.environment, row.hour))
            if known is None or known.recorded_at < row.recorded_at:
                self.late_hours[(row.environment, row.hour)] = row


class ReportsLoader:
    """The consumer thread: ``start``, then ``stop`` (finishes the batch in hand, commits,
    closes). A failure stops the thread and is kept in :attr:`error` for the host to raise."""

    def __init__(self, settings: Settings, metrics: ProcessorMetrics, client_id: str) -> None:
        self.settings = settings
        self.topic = settings.kafka.reports_topic
        self.group = reports_group(settings)
        self.metrics = metrics
        self.client_id = client_id
        self.abort = threading.Event()  # set by stop() when the batch in hand cannot land
        self.sink = WarehouseSink(
            lambda: clients.clickhouse(settings, compress=False, autogenerate_session_id=False),
            settings.clickhouse.database,
            self.abort,
            on_retry=lambda table: metrics.write_retries.labels(table).inc(),
        )
        self.loaded = 0  # reports inserted and committed
        self.skipped = 0  # undecodable records
        self.error: BaseException | None = None
        self.last_error: str | None = None  # the latest error, also a survived one (health)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reports-loader", daemon=True)

    # ------------------------------------------------------------------ host side
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Finish the batch in hand and leave; past ``timeout_s`` (the warehouse is down)
        abandon it uncommitted (read again on the next start)."""
        self._stop.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("reports loader: inserts still failing at shutdown; abandoning")
            self.abort.set()
            self._thread.join(10.0)

    def status(self) -> dict[str, object]:
        return {
            "alive": self.alive,
            "loaded": self.loaded,
            "skipped": self.skipped,
            "error": self.last_error,
        }

    # ------------------------------------------------------------------ thread
    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        return Consumer(
            clients.consumer_config(
                self.settings,
                self.group,
                **{
                    "client.id": f"byoc-reports-{self.client_id}",
                    "logger": logging.getLogger("rdkafka.consumer"),
                    "fetch.wait.max.ms": FETCH_WAIT_MS,
                },
            )
        )

    def _run(self) -> None:
        consumer = None
        try:
            consumer = self._consumer()
            consumer.subscribe([self.topic])
            log.info("reports loader consuming %s as group %s", self.topic, self.group)
            while not self._stop.is_set():
                messages = consumer.consume(CONSUME_BATCH, CONSUME_WAIT_S)
                if messages:
                    self._load(consumer, messages)
        except Aborted as exc:  # stop() gave up on the batch in hand: read again next start
            log.warning("reports loader: batch abandoned on shutdown, not committed: %s", exc)
        except BaseException as exc:  # surfaced by the host, which stops
            self.error = exc
            self.last_error = repr(exc)
            log.exception("reports loader failed")
        finally:
            if consumer is not None:
                try:
                    consumer.close()  # leaves the group
                except Exception as exc:
                    log.warning("reports loader: consumer close failed: %s", exc)
            log.info("reports loader stopped")

    def _load(self, consumer: Any, messages: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        batch = _Batch()
        for message in messages:
            error = message.error()
            if error is not None:
                if not error.retriable() and error.fatal():
                    raise RuntimeError(f"Kafka consumer fatal error: {error}")
                log.warning("reports consumer error: %s", error)
                continue
            batch.cover(message.partition(), message.offset())
            self._take(message, batch)
        job = job_key(batch.ranges)
        if batch.report_count:
            self.sink.insert(
                REPORTS_TABLE,
                USAGE_REPORTS_COLUMNS,
                b"".join(batch.reports),
                dedup_token(self.topic, job, REPORTS_TABLE),
            )
            self.metrics.rows_written.labels(REPORTS_TABLE).inc(batch.report_count)
        if batch.late_hours:
            rows = list(batch.late_hours.values())
            self.sink.insert(
                LATE_HOURS_TABLE,
                LATE_HOUR_COLUMNS,
                lambda: encode_late_hours(rows),  # recorded_at stamped per attempt
                dedup_token(self.topic, job, LATE_HOURS_TABLE),
            )
            self.metrics.rows_written.labels(LATE_HOURS_TABLE).inc(len(rows))
        if not batch.ranges:
            return
        offsets = [TopicPartition(self.topic, p, last + 1) for p, (_, last) in batch.ranges.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # e.g. revoked meanwhile: the batch is read again, and collapses
            self.last_error = f"offset commit failed: {exc}"
            log.warning("reports loader: offset commit failed (read again): %s", exc)
        self.loaded += batch.report_count
        self.metrics.reports_loaded.inc(batch.report_count)

    def _take(self, message: Any, batch: _Batch) -> None:
        try:
            report_batch = decode_report_batch(message.value())
            rows = report_rows(report_batch)
            late = late_hour_rows(report_batch)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, OverflowError) as exc:
            # TypeError: a tombstone (no value); OverflowError: a createdAt beyond any float.
            self._skip(message, exc)
            return
        batch.add(report_batch, rows, late)

    def _skip(self, message: Any, exc: BaseException) -> None:
        self.skipped += 1
        self.metrics.reports_skipped.inc()
        self.last_error = f"undecodable record skipped: {exc}"
        log.error(
            "%s partition %d offset %d: not a UsageReportBatch, skipped: %s",
            message.topic(),
            message.partition(),
            message.offset(),
            exc,
        )
