"""The ingestion logic shared by the REST and GraphQL routes: validate, pack, produce, answer.

Raw events go to ``settings.kafka.events_topic`` (EventBatch records); aggregated usage to
``settings.kafka.reports_topic`` (UsageReportBatch records). Nothing is answered 2xx before
every record of the request is acknowledged with acks=all.

Aggregated usage and the usage counters: the counters belong to the enforcement component.
When it registered a :class:`byoc_platform.plugins.UsageApplier` in ``context.hooks.usage``,
a report is validated by it first (unknown customer/feature -> its 4xx, nothing written),
logged durably, then applied, and the answer carries its ``currentUsage`` and usage period.
Without it (ingest-only process) the answer carries what ingestion knows: ``currentUsage`` =
the value for SET, and no ``currentUsage`` for DELTA (the running total is unknown here).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from byoc_platform.api_errors import ApiError
from byoc_platform.events import UsageReport, dimension_value_problem, epoch_ms, event_time_problem
from byoc_platform.plugins import RuntimeHooks, UsageOutcome
from byoc_platform.settings import Settings
from streaming.ingest import records, wire
from streaming.ingest.producer import DurableProducer

log = logging.getLogger(__name__)

_USAGE_IDS = uuid.UUID("5f0b7c3e-1d2a-4f7e-9a51-7f6f3c1f2b10")  # uuid5 namespace

_STATUS_REASONS = {
    400: "malformed",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "buffer_full",
    503: "unavailable",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rejection_reason(exc: ApiError) -> str:
    reason = getattr(exc, "reason", None)
    return reason or _STATUS_REASONS.get(exc.status, str(exc.status))


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry, producer: DurableProducer) -> None:
        self.requests = Counter(
            "byoc_ingest_requests_total", "Ingestion requests", ["route"], registry=registry
        )
        self.events = Counter(
            "byoc_ingest_events_total",
            "Events and usage reports acknowledged by the broker",
            ["route"],
            registry=registry,
        )
        self.records = Counter(
            "byoc_ingest_records_total",
            "Kafka records acknowledged",
            ["topic"],
            registry=registry,
        )
        self.rejections = Counter(
            "byoc_ingest_rejections_total",
            "Requests answered with an error, by reason",
            ["route", "reason"],
            registry=registry,
        )
        self.produce_latency = Histogram(
            "byoc_ingest_produce_seconds",
            "Time from produce to the last acks=all acknowledgement of a request",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        fill = Gauge(
            "byoc_ingest_buffer_fill_ratio",
            "Unacknowledged bytes over the producer buffer limit (429 at 1)",
            registry=registry,
        )
        fill.set_function(lambda: producer.inflight_bytes / producer.buffer_limit)
        inflight = Gauge(
            "byoc_ingest_buffer_bytes",
            "Unacknowledged bytes in the producer",
            registry=registry,
        )
        inflight.set_function(lambda: producer.inflight_bytes)
        queued = Gauge(
            "byoc_ingest_producer_queue",
            "Records and requests queued in librdkafka",
            registry=registry,
        )
        queued.set_function(lambda: producer.queued)


class IngestService:
    def __init__(
        self,
        settings: Settings,
        producer: DurableProducer,
        metrics: IngestMetrics,
        hooks: RuntimeHooks,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.hooks = hooks
        self.max_items = settings.api.max_batch_events
        self.max_future_ms = int(settings.api.max_future_skew_s * 1000)
        self.events_topic = settings.kafka.events_topic
        self.reports_topic = settings.kafka.reports_topic

    # --- raw events --------------------------------------------------------------------------

    async def ingest_events(
        self, route: str, environment: str, events: list[Any], received: int
    ) -> int:
        """Produce events stamped at ``received`` (receive time, epoch ms); returns the count.

        The same receive time is the default event time and the record's receivedAt."""
        batch = records.event_records(
            self.events_topic,
            environment,
            received,
            events,
            self.producer.partitions(self.events_topic),
        )
        await self.producer.send(batch)
        self.metrics.events.labels(route).inc(len(events))
        self.metrics.records.labels(self.events_topic).inc(len(batch))
        return len(events)

    # --- aggregated usage --------------------------------------------------------------------

    def to_reports(
        self, environment: str, usages: Sequence[wire.UsageIn], received: int, path: str
    ) -> list[UsageReport]:
        reports = []
        for index, usage in enumerate(usages):
            where = f"{path}[{index}]" if path.endswith("usages") else path
            value = wire.round_value(usage.value, where)
            created = received if usage.createdAt is None else epoch_ms(usage.createdAt)
            if usage.dimensions and "" in usage.dimensions:
                raise wire.empty_dimension_name(f"{where}.dimensions")
            for name, dimension in (usage.dimensions or {}).items():
                bad = dimension_value_problem(dimension)
                if bad is not None:
                    raise wire.Rejected(
                        422,
                        f"Invalid request: number {bad} - at `{where}.dimensions.{name}`",
                        "invalid",
                        retryable=False,
                    )
            problem = event_time_problem(created, received, self.max_future_ms)
            if problem is not None:
                raise wire.Rejected(
                    422,
                    f"Invalid request: createdAt {problem} - at `{where}.createdAt`",
                    "future_timestamp" if created > received else "invalid",
                    retryable=False,
                )
            if usage.idempotencyKey:
                # Stable id: a retried report answers the same measurement id.
                name = f"{environment}\x1f{usage.customerId}\x1f{usage.idempotencyKey}"
                measurement_id = str(uuid.uuid5(_USAGE_IDS, name))
            else:
                measurement_id = str(uuid.uuid4())
            reports.append(
                UsageReport(
                    id=measurement_id,
                    customerId=usage.customerId,
                    featureId=usage.featureId,
                    value=value,
                    updateBehavior=usage.updateBehavior,
                    createdAt=created,
                    idempotencyKey=usage.idempotencyKey,
                    resourceId=usage.resourceId,
                    dimensions=usage.dimensions or {},
                )
            )
        return reports

    async def report_usage(
        self, route: str, environment: str, usages: Sequence[wire.UsageIn], path: str
    ) -> tuple[int, list[UsageReport], list[UsageOutcome]]:
        """Validate, log durably, apply: (receive time, reports, outcomes in order)."""
        received = now_ms()
        reports = self.to_reports(environment, usages, received, path)
        applier = self.hooks.usage
        if applier is not None:
            applier.validate_usage(environment, reports, path=path.removeprefix("$."))
        batch = records.report_records(
            self.reports_topic,
            environment,
            received,
            reports,
            self.producer.partitions(self.reports_topic),
        )
        await self.producer.send(batch)
        self.metrics.events.labels(route).inc(len(reports))
        self.metrics.records.labels(self.reports_topic).inc(len(batch))
        outcomes = [self._own_outcome(r) for r in reports]
        if applier is not None:
            try:
                outcomes = await applier.apply_usage(environment, reports)
            except Exception:
                # The reports are durable (the log is the source of truth): answer 2xx with
                # what ingestion knows rather than invite a retry that double-logs a DELTA.
                log.exception("applying durable usage reports to the counters failed")
        return received, reports, outcomes

    @staticmethod
    def _own_outcome(report: UsageReport) -> UsageOutcome:
        return UsageOutcome(current_usage=report.value if report.updateBehavior == "SET" else None)
