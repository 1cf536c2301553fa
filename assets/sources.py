"""The ClickHouse tables the stream processor fills, as external assets, and their freshness.

Dagster does not materialize these: the stream processor (or the Flink job) writes them
continuously. They are in the graph so that lineage shows where rollups and archives come
from, and so that checks can watch them.
"""

from datetime import UTC, datetime

from dagster import AssetCheckResult, AssetCheckSeverity, AssetSpec, asset_check

from assets.resources import WarehouseResource

GROUP = "sources"

usage_events = AssetSpec(
    "usage_events",
    group_name=GROUP,
    description="Deduplicated raw usage events (ReplacingMergeTree keyed by the dedup key, "
    "partitioned by day; read with FINAL). Written by the stream processor.",
    kinds={"clickhouse"},
    metadata={"table": "usage_events", "partitioning": "toYYYYMMDD(event_time)"},
)
usage_minute = AssetSpec(
    "usage_minute",
    group_name=GROUP,
    description="1-minute aggregates of the stream (versioned snapshots, late rows apart).",
    kinds={"clickhouse"},
    metadata={"table": "usage_minute", "partitioning": "toYYYYMMDD(minute)"},
)
usage_reports = AssetSpec(
    "usage_reports",
    group_name=GROUP,
    description="Aggregated usage reports (REST /api/v2/usage, GraphQL reportUsage, gRPC "
    "ReportUsage) as logged to usage.reports, one row per receipt; readers count each report "
    "id once, at its first receipt. Written by the stream processor (or, with Flink, by "
    "ClickHouse's Kafka engine).",
    kinds={"clickhouse"},
    metadata={"table": "usage_reports", "partitioning": "toYYYYMMDD(report_time)"},
)
late_hours = AssetSpec(
    "late_hours",
    group_name=GROUP,
    description="Hours touched by late events, or by events or reports received after the "
    "hour ended: the late-events sensor re-rolls them up.",
    kinds={"clickhouse"},
    metadata={"table": "late_hours"},
)

SPECS = [usage_events, usage_minute, usage_reports, late_hours]


@asset_check(
    asset=usage_events.key,
    description="Events keep arriving: the newest ingest time is recent "
    "(settings.quality.source_freshness_minutes).",
)
def usage_events_freshness(warehouse: WarehouseResource) -> AssetCheckResult:
    limit_min = warehouse.settings.quality.source_freshness_minutes
    with warehouse.client() as client:
        newest, rows = client.query(
            f"SELECT max(ingest_time), count() FROM {warehouse.database}.usage_events"
        ).result_rows[0]
    now = datetime.now(UTC)
    if not rows:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description="usage_events is empty: nothing has been ingested yet",
            metadata={"max_lag_minutes": limit_min},
        )
    newest = newest.replace(tzinfo=UTC)
    lag_min = (now - newest).total_seconds() / 60
    return AssetCheckResult(
        passed=lag_min <= limit_min,
        severity=AssetCheckSeverity.WARN,
        description=f"last event ingested {lag_min:.1f} min ago (limit {limit_min} min)",
        metadata={
            "last_ingest_time": newest.isoformat(),
            "lag_minutes": round(lag_min, 2),
            "max_lag_minutes": limit_min,
        },
    )
