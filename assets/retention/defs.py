"""The ``retention`` asset."""

from datetime import UTC, datetime, timedelta

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.archive.defs import cold_archive
from assets.resources import ArchiveStoreResource, WarehouseResource
from assets.retention.policy import RetentionReport, apply_archive_expiry, apply_hot_retention


class RetentionConfig(Config):
    now: str = Field(
        default="",
        description="Evaluate the policies as of this UTC time (ISO 8601); empty: now.",
    )


@asset(
    group_name="retention",
    deps=[cold_archive],
    kinds={"clickhouse", "s3"},
    description="Drops ClickHouse day partitions older than settings.retention.hot_days ONLY "
    "when their archive is verified and current; deletes archive objects older than "
    "settings.retention.archive_days. Every deletion and refusal is recorded.",
)
def retention(
    context: AssetExecutionContext,
    config: RetentionConfig,
    warehouse: WarehouseResource,
    archive_store: ArchiveStoreResource,
) -> MaterializeResult:
    policy = warehouse.settings.retention
    now = datetime.fromisoformat(config.now) if config.now else datetime.now(UTC)
    # Day partitions are UTC days: a time given with another offset is compared in UTC.
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    hot_cutoff = (now - timedelta(days=policy.hot_days)).date()
    archive_cutoff = (now - timedelta(days=policy.archive_days)).date()
    report = RetentionReport()
    s3 = archive_store.s3()
    with warehouse.client() as client:
        db = warehouse.database
        apply_hot_retention(client, db, s3, archive_store.bucket, hot_cutoff, report)
        apply_archive_expiry(client, db, s3, archive_store.bucket, archive_cutoff, report)
    for refused in report.refused:
        context.log.warning("kept %s: %s", refused.day, refused.reason)
    return MaterializeResult(
        metadata={
            "evaluated_at": now.isoformat(),
            "hot_days": policy.hot_days,
            "archive_days": policy.archive_days,
            "dropped_days": MetadataValue.json(
                [{"day": str(d.day), "rows": d.rows, "tables": d.tables} for d in report.dropped]
            ),
            "refused_days": MetadataValue.json(
                [{"day": str(d.day), "reason": d.reason} for d in report.refused]
            ),
            "expired_archive_days": MetadataValue.json(report.expired_days),
            "expired_objects": len(report.expired_objects),
            "rows_dropped": sum(d.rows for d in report.dropped),
        }
    )
