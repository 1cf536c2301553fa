"""ClickHouse tables owned by the Dagster side, created idempotently next to the stream's.

- ``usage_hourly``: the rollup rows. Every materialization of an hour writes a new
  ``revision``; readers use the hour's latest revision in ``usage_hourly_revisions``, which
  is written LAST, so a crashed rollup never shows a half-written hour and re-materializing an
  hour replaces it atomically (the previous revisions are deleted afterwards).
- ``usage_hourly_revisions``: one header per rollup revision: row count, totals and the
  meters (per environment) it was computed with, so reconciliation recomputes with the same.
- ``usage_published``: the publish ledger. One row per (key, hour, revision) holding the
  DELTA sent to the control plane under one idempotency key; ``status`` goes pending -> sent
  (ReplacingMergeTree on ``recorded_at``: read with FINAL). Sum of deltas = published total.
- ``usage_published_levels``: the publish ledger of SET levels (assets/publish/levels.py):
  one row per (key, hour, revision) holding the level sent with updateBehavior SET.
- ``archive_manifests``: one row per archived (environment, hour): object, row count,
  checksum, content fingerprint, verification state (ReplacingMergeTree: read with FINAL).
- ``retention_log``: every deletion and every refusal of the retention asset.
"""

from __future__ import annotations

from typing import Protocol

from byoc_platform.warehouse_cluster import to_replicated


class _Commander(Protocol):
    def command(self, cmd: str) -> object: ...


def _ledger(db: str, table: str) -> str:
    """A publish ledger (assets/publish/ledger.py): the DELTAs, or the SET levels (levels.py)."""
    return f"""
        CREATE TABLE IF NOT EXISTS {db}.{table} (
            environment LowCardinality(String),
            hour DateTime('UTC'),
            customer_id String,
            resource_id String,
            feature_id String,
            revision UInt32,
            delta Float64,
            total Float64,
            idempotency_key String,
            status LowCardinality(String),
            recorded_at DateTime64(6, 'UTC')
        )
        ENGINE = ReplacingMergeTree(recorded_at)
        ORDER BY (environment, hour, customer_id, resource_id, feature_id, revision)
        """


def statements(db: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""
        CREATE TABLE IF NOT EXISTS {db}.usage_hourly (
            hour DateTime('UTC'),
            revision UInt64,
            environment LowCardinality(String),
            customer_id String,
            resource_id String,
            feature_id String,
            event_name LowCardinality(String),
            aggregation LowCardinality(String),
            field String,
            value Float64,
            events UInt64
        )
        ENGINE = MergeTree
        PARTITION BY toYYYYMM(hour)
        ORDER BY (hour, revision, environment, customer_id, resource_id, feature_id)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.usage_hourly_revisions (
            hour DateTime('UTC'),
            revision UInt64,
            rows UInt64,
            events UInt64,
            value_total Float64,
            meters String,
            created_at DateTime64(3, 'UTC')
        )
        ENGINE = MergeTree
        ORDER BY (hour, revision)
        """,
        _ledger(db, "usage_published"),
        _ledger(db, "usage_published_levels"),
        f"""
        CREATE TABLE IF NOT EXISTS {db}.archive_manifests (
            environment LowCardinality(String),
            hour DateTime('UTC'),
            object_key String,
            rows UInt64,
            bytes UInt64,
            sha256 String,
            sum_event_time_ms Int64,
            sum_key_bytes UInt64,
            status LowCardinality(String),
            written_at DateTime64(6, 'UTC')
        )
        ENGINE = ReplacingMergeTree(written_at)
        ORDER BY (environment, hour)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.retention_log (
            at DateTime64(3, 'UTC'),
            action LowCardinality(String),
            target String,
            day Date,
            detail String
        )
        ENGINE = MergeTree
        ORDER BY at
        """,
    ]


def ensure_tables(client: _Commander, db: str, cluster: str | None = None) -> None:
    """Create the tables if missing; safe to repeat. With ``cluster`` (settings'
    ``clickhouse.cluster``) they are Replicated*MergeTree created ON CLUSTER, like the stream's
    tables, so every replica holds the rollups, the publish ledger and the manifests."""
    for statement in statements(db):
        client.command(to_replicated(statement, cluster) if cluster else statement)
