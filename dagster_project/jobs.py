"""Jobs: what the schedules, the sensor and backfills launch."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from assets.archive.defs import cold_archive
from assets.publish.defs import published_usage
from assets.quality.coverage import pipeline_coverage
from assets.retention.defs import retention
from assets.rollups.defs import hourly_usage_rollup

# The rollup's checks run in the same run (the blocking reconciliation gates the publish).
rollup_and_publish_job = define_asset_job(
    "rollup_and_publish",
    selection=AssetSelection.assets(hourly_usage_rollup, published_usage),
    description="Roll up one hour, check it, publish it to the control plane.",
)
archive_job = define_asset_job(
    "daily_archive",
    selection=AssetSelection.assets(cold_archive),
    description="Archive one day of raw events to the cold tier.",
)
retention_job = define_asset_job(
    "daily_retention",
    selection=AssetSelection.assets(retention, pipeline_coverage),
    description="Apply the retention policies, then report coverage.",
)

JOBS = [rollup_and_publish_job, archive_job, retention_job]
