"""Every asset and asset check of the code location, by group."""

from __future__ import annotations

from assets.archive.defs import cold_archive
from assets.publish.defs import published_usage
from assets.quality.checks import (
    archive_matches_warehouse,
    rollup_expectations,
    rollup_reconciles_with_raw_events,
)
from assets.quality.coverage import pipeline_coverage
from assets.retention.defs import retention
from assets.rollups.defs import hourly_usage_rollup
from assets.sources import SPECS, usage_events_freshness

ASSETS = [
    *SPECS,  # sources
    hourly_usage_rollup,  # rollups
    published_usage,  # publish
    cold_archive,  # archive
    retention,  # retention
    pipeline_coverage,  # quality
]
CHECKS = [
    usage_events_freshness,
    rollup_reconciles_with_raw_events,
    rollup_expectations,
    archive_matches_warehouse,
]
