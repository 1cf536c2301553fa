"""ClickHouse schema of the hot tier, applied idempotently (CREATE ... IF NOT EXISTS).

Shared contract between the stream processor (writer) and the Dagster assets (readers).
Numbered migrations run in order; each statement is safe to repeat.

- ``usage_events``: deduplicated raw events. The sorting key IS the dedup key, so a replayed
  insert collapses under ``FINAL`` even if dedup state was lost; the processor dedups before
  insert anyway (ReplacingMergeTree alone merges "at an unknown time", Lago #4725).
- ``usage_minute``: 1-minute aggregates. One row per (window key, minute, metric, ``late_key``);
  ``late_key`` is '' for the on-time window and the event's idempotency key for a late event.
  Rows are snapshots versioned by ``version`` (a monotone counter of the window's progress), so
  an early-fired partial window is replaced by its later, fuller snapshot and a replay after a
  crash rewrites the same rows. Read it with ``FINAL`` and sum/min/max across late rows.
  ``metric`` is '' for the event count (sum = count) or the name of a numeric dimension.
- ``late_hours``: hours touched by late events or by events received after the hour ended,
  for the re-rollup sensor. ``recorded_at`` is the time the row was written (never earlier
  than the receive time of the record that carried the event): the table keeps the newest row
  per (environment, hour), so a row written after another of its hour must be the newer one,
  or ``FINAL`` hides it and the sensor never rolls the hour up again.
- ``usage_reports``: aggregated usage (REST ``/api/v2/usage``, GraphQL ``reportUsage``, gRPC
  ``ReportUsage``) as logged to ``usage.reports``, one row per report and receipt. ``report_id``
  is the measurement id answered to the caller (one per idempotency key); a report logged
  again under the same id (a retried call, a reused key) is a row of its own with its own
  ``received_at``: readers take the FIRST receipt of each id (``argMin(..., received_at)``),
  the one the enforcement counters counted. A row read twice from the log (at-least-once
  delivery) has the same key and collapses. ``report_time`` is the caller's createdAt, else
  the receive time: the hour the usage belongs to.
"""

from __future__ import annotations

from typing import Protocol

# Column order of usage_events, for inserts (writers) and Parquet archives (readers).
USAGE_EVENTS_COLUMNS = (
    "environment",
    "customer_id",
    "resource_id",
    "event_name",
    "idempotency_key",
    "event_time",
    "ingest_time",
    "labels",
    "values",
    "dimensions",
)

# Column order of usage_reports, for inserts.
USAGE_REPORTS_COLUMNS = (
    "environment",
    "customer_id",
    "resource_id",
    "feature_id",
    "report_id",
    "value",
    "update_behavior",
    "idempotency_key",
    "report_time",
    "received_at",
    "dimensions",
)


class _Commander(Protocol):
    def command(self, cmd: str) -> object: ...


def migrations(database: str) -> list[str]:
    db = database
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""
        CREATE TABLE IF NOT EXISTS {db}.usage_events (
            environment LowCardinality(String),
            customer_id String,
            resource_id String,
            event_name LowCardinality(String),
            idempotency_key String,
            event_time DateTime64(3, 'UTC'),
            ingest_time DateTime64(3, 'UTC'),
            labels Map(String, String),
            `values` Map(String, Float64),
            dimensions String
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMMDD(event_time)
        ORDER BY (environment, customer_id, idempotency_key)
        SETTINGS non_replicated_deduplication_window = 1000
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.usage_minute (
            environment LowCardinality(String),
            customer_id String,
            resource_id String,
            event_name LowCardinality(String),
            dimensions_key String,
            labels Map(String, String),
            minute DateTime('UTC'),
            metric String,
            late_key String,
            count UInt64,
            sum Float64,
            min Float64,
            max Float64,
            first_event_time DateTime64(3, 'UTC'),
            last_event_time DateTime64(3, 'UTC'),
            version UInt64
        )
        ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMMDD(minute)
        ORDER BY (environment, customer_id, resource_id, event_name, dimensions_key, minute,
                  metric, late_key)
        SETTINGS non_replicated_deduplication_window = 1000
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.late_hours (
            environment LowCardinality(String),
            hour DateTime('UTC'),
            recorded_at DateTime64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree(recorded_at)
        ORDER BY (environment, hour)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.usage_reports (
            environment LowCardinality(String),
            customer_id String,
            resource_id String,
            feature_id LowCardinality(String),
            report_id String,
            value Float64,
            update_behavior LowCardinality(String),
            idempotency_key String,
            report_time DateTime64(3, 'UTC'),
            received_at DateTime64(3, 'UTC'),
            dimensions String
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMMDD(report_time)
        ORDER BY (environment, customer_id, report_id, received_at)
        SETTINGS non_replicated_deduplication_window = 1000
        """,
    ]


def apply_migrations(client: _Commander, database: str) -> int:
    """Apply every migration; returns how many statements ran."""
    statements = migrations(database)
    for statement in statements:
        client.command(statement)
    return len(statements)
