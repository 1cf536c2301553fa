"""Asset checks of the rollup and the archive (shown in the UI with their metadata).

The checks are partitioned like their assets (``partitions_def`` on asset checks is a preview
API in Dagster 1.13, pinned exactly for that reason), so each partition has its own result.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from assets.archive.defs import cold_archive
from assets.archive.hours import hot_fingerprints, recorded_manifests
from assets.meters import fetch_feature_ids
from assets.partitions import DAILY, HOURLY, ch_time, day_start, hour_start, quietly
from assets.quality.reconciliation import reconcile
from assets.resources import ControlPlaneResource, WarehouseResource
from assets.rollups.compute import latest_revision, read_rollup
from assets.rollups.defs import hourly_usage_rollup


def partitioned_check(**kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``asset_check`` with ``partitions_def`` (a preview API), without its warning."""
    return quietly(asset_check, **kwargs)


@partitioned_check(
    asset=hourly_usage_rollup,
    partitions_def=HOURLY,
    blocking=True,
    description="Invariant 3: the rollup equals the sum over the deduplicated raw events, "
    "recomputed along another path. Blocking: a failing hour is not published.",
)
def rollup_reconciles_with_raw_events(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.client() as client:
        results = [
            reconcile(client, warehouse.database, hour_start(key)) for key in context.partition_keys
        ]
    failing = [r for r in results if not r.passed]
    return AssetCheckResult(
        passed=not failing,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(f"{r.hour:%Y-%m-%dT%H}: {r.reason}" for r in failing[:3])
        or "rollup equals the raw events",
        metadata={
            "hours": len(results),
            "failing_hours": MetadataValue.json([f"{r.hour:%Y-%m-%dT%H}" for r in failing]),
            "revision": results[-1].revision or 0,
            "expected_rows": sum(r.expected_rows for r in results),
            "rollup_rows": sum(r.actual_rows for r in results),
            "expected_total": sum(r.expected_total for r in results),
            "rollup_total": sum(r.actual_total for r in results),
            "mismatches": MetadataValue.json([m for r in failing for m in r.mismatches][:20]),
        },
    )


def published_features(client: Any, warehouse: WarehouseResource, hour: datetime) -> list[tuple]:
    """(environment, feature) pairs with usage of ``hour`` acknowledged by the control plane."""
    db = warehouse.database
    return client.query(
        " UNION DISTINCT ".join(
            f"SELECT environment, feature_id FROM (SELECT environment, feature_id, status "
            f"FROM {db}.{table} FINAL WHERE hour = {{hour:DateTime('UTC')}}) "
            "WHERE status = 'sent'"
            for table in ("usage_published", "usage_published_levels")
        ),
        parameters={"hour": ch_time(hour)},
    ).result_rows


@partitioned_check(
    asset=hourly_usage_rollup,
    partitions_def=HOURLY,
    description="Great Expectations suite: non-null, non-empty keys, non-negative values, at "
    "least one event per row, feature ids the catalog holds, the revision's meters kept or "
    "the control plane accepted usage of for the hour.",
)
def rollup_expectations(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    control_plane: ControlPlaneResource,
) -> AssetCheckResult:
    import pandas as pd

    from assets.quality.expectations import validate_rollup

    rows, hours = [], []
    # The features each hour's revision rolled up: besides the catalog's, those deleted since
    # whose billed usage the rollup keeps (F36) are allowed too.
    recorded: set[str] = set()
    with warehouse.client() as client:
        for key in context.partition_keys:
            hour = hour_start(key)
            latest = latest_revision(client, warehouse.database, hour)
            if latest is None:
                continue
            found = read_rollup(client, warehouse.database, hour, latest.revision)
            rows += found
            hours += [hour] * len(found)
            recorded |= {f"{env}/{m.feature_id}" for env, ms in latest.meters.items() for m in ms}
            # And the features whose usage of the hour the control plane already accepted (a
            # reported feature deleted since: reports record no meter).
            recorded |= {f"{env}/{f}" for env, f in published_features(client, warehouse, hour)}
    frame = pd.DataFrame(
        [r.__dict__ for r in rows],
        columns=[
            "environment",
            "customer_id",
            "resource_id",
            "feature_id",
            "event_name",
            "aggregation",
            "field",
            "value",
            "events",
        ],
    )
    frame["hour"] = pd.Series(hours, dtype="datetime64[ns, UTC]")
    frame["env_feature"] = frame["environment"] + "/" + frame["feature_id"]
    allowed = set(recorded)
    with control_plane.catalog() as catalog:
        for env in sorted(frame["environment"].unique()):
            allowed |= {f"{env}/{f}" for f in fetch_feature_ids(catalog, env)}
    result = validate_rollup(frame, sorted(allowed))
    return AssetCheckResult(
        passed=result.success,
        severity=AssetCheckSeverity.ERROR,
        description=f"{result.evaluated - len(result.failed)}/{result.evaluated} expectations met"
        f" on {len(frame)} rows",
        metadata={"rows": len(frame), "results": MetadataValue.json(result.results)},
    )


@dataclass
class ArchiveComparison:
    clickhouse_rows: int
    archive_rows: int
    hours: int
    retired: bool
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences


def compare_archive(client: Any, db: str, day: datetime) -> ArchiveComparison:
    """Every hour ClickHouse holds for ``day`` against its verified archive (and back)."""
    end = day + timedelta(days=1)
    hot = hot_fingerprints(client, db, day, end)
    recorded = recorded_manifests(client, db, day, end)
    retired = (
        client.query(
            f"SELECT count() FROM {db}.retention_log WHERE action = 'drop_partition' "
            "AND day = {d:Date}",
            parameters={"d": day.date()},
        ).result_rows[0][0]
        > 0
    )
    differences: list[dict[str, Any]] = []
    for (env, hour), fp in sorted(hot.items()):
        known = recorded.get((env, hour))
        archived = known.fingerprint.rows if known and known.status == "verified" else None
        if archived is None or known is None or known.fingerprint != fp:
            differences.append(
                {
                    "hour": f"{env} {hour:%H}:00",
                    "clickhouse_rows": fp.rows,
                    "archive_rows": archived,
                }
            )
    verified = {k: v for k, v in recorded.items() if v.status == "verified"}
    if not retired:  # archived rows ClickHouse no longer holds, without retention saying so
        for env, hour in sorted(k for k in verified if k not in hot):
            differences.append(
                {
                    "hour": f"{env} {hour:%H}:00",
                    "clickhouse_rows": 0,
                    "archive_rows": verified[(env, hour)].fingerprint.rows,
                }
            )
    return ArchiveComparison(
        clickhouse_rows=sum(fp.rows for fp in hot.values()),
        archive_rows=sum(v.fingerprint.rows for v in verified.values()),
        hours=len(hot),
        retired=retired,
        differences=differences,
    )


@partitioned_check(
    asset=cold_archive,
    partitions_def=DAILY,
    description="Each archived hour holds exactly the rows ClickHouse holds for it (row count "
    "and content fingerprint); hours retired from ClickHouse by retention are exempt.",
)
def archive_matches_warehouse(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.client() as client:
        results = [
            compare_archive(client, warehouse.database, day_start(key))
            for key in context.partition_keys
        ]
    result = ArchiveComparison(
        clickhouse_rows=sum(r.clickhouse_rows for r in results),
        archive_rows=sum(r.archive_rows for r in results),
        hours=sum(r.hours for r in results),
        retired=all(r.retired for r in results),
        differences=[d for r in results for d in r.differences],
    )
    return AssetCheckResult(
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        description="archive equals ClickHouse"
        if result.passed
        else f"{len(result.differences)} hours differ between the archive and ClickHouse",
        metadata={
            "clickhouse_rows": result.clickhouse_rows,
            "archive_rows": result.archive_rows,
            "hours": result.hours,
            "hot_partition_retired": result.retired,
            "differences": MetadataValue.json(result.differences[:48]),
        },
    )
