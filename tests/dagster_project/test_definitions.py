"""The code location loads, and its asset graph has the groups, deps and checks it should."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    DailyPartitionsDefinition,
    Definitions,
    HourlyPartitionsDefinition,
    build_schedule_context,
)

from assets.resources import ArchiveStoreResource
from byoc_platform.settings import Settings
from dagster_project.definitions import defs
from dagster_project.resources import resources_for
from dagster_project.schedules import hour_due, schedules_for

GRAPH = defs.resolve_asset_graph()


def _node(name: str):
    return GRAPH.get(AssetKey(name))


def test_definitions_load():
    Definitions.validate_loadable(defs)


def test_assets_are_grouped_by_concern():
    groups = {key.to_user_string(): GRAPH.get(key).group_name for key in GRAPH.get_all_asset_keys()}
    assert groups == {
        "usage_events": "sources",
        "usage_minute": "sources",
        "usage_reports": "sources",
        "late_hours": "sources",
        "hourly_usage_rollup": "rollups",
        "published_usage": "publish",
        "cold_archive": "archive",
        "retention": "retention",
        "pipeline_coverage": "quality",
    }
    sources = {"usage_events", "usage_minute", "usage_reports", "late_hours"}
    for name in sources:
        assert not _node(name).is_materializable  # external: the stream writes them
    assert all(_node(n).is_materializable for n in groups.keys() - sources)


def test_dependencies_follow_the_data_flow():
    parents = {
        key.to_user_string(): {p.to_user_string() for p in GRAPH.get(key).parent_keys}
        for key in GRAPH.get_all_asset_keys()
    }
    assert parents["hourly_usage_rollup"] == {"usage_events", "usage_reports"}
    assert parents["published_usage"] == {"hourly_usage_rollup"}
    assert parents["cold_archive"] == {"usage_events"}
    assert parents["retention"] == {"cold_archive"}
    assert parents["pipeline_coverage"] == {"usage_events", "usage_reports", "late_hours"}


def test_partitions_are_utc_hours_and_days():
    for name in ("hourly_usage_rollup", "published_usage"):
        partitions = _node(name).partitions_def
        assert isinstance(partitions, HourlyPartitionsDefinition)
        assert partitions.timezone == "UTC"
    assert isinstance(_node("cold_archive").partitions_def, DailyPartitionsDefinition)
    assert _node("retention").partitions_def is None


def test_checks_are_attached_where_they_guard():
    checks = {
        (key.asset_key.to_user_string(), key.name): GRAPH.get(key) for key in GRAPH.asset_check_keys
    }
    assert set(checks) == {
        ("hourly_usage_rollup", "rollup_reconciles_with_raw_events"),
        ("hourly_usage_rollup", "rollup_expectations"),
        ("usage_events", "usage_events_freshness"),
        ("cold_archive", "archive_matches_warehouse"),
    }
    assert checks[("hourly_usage_rollup", "rollup_reconciles_with_raw_events")].blocking
    assert not checks[("hourly_usage_rollup", "rollup_expectations")].blocking
    assert _node("published_usage").pools == {"control_plane_publish"}
    assert _node("cold_archive").pools == {"cold_archive"}


def test_jobs_schedules_and_sensor():
    assert {j.name for j in defs.jobs} >= {"rollup_and_publish", "daily_archive", "daily_retention"}
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {"hourly_rollup_and_publish", "daily_archive", "daily_retention"}
    assert {s.name for s in defs.sensors} == {"late_events", "unfinished_hours"}


def test_hourly_schedule_rolls_up_the_hour_closed_a_lag_ago():
    settings = Settings(retention={"rollup_lag_minutes": 10})
    [hourly, daily_archive, _] = schedules_for(settings)
    assert hourly.cron_schedule == "10 * * * *"
    tick = datetime(2026, 1, 1, 14, 10, tzinfo=UTC)
    request = hourly(build_schedule_context(scheduled_execution_time=tick))
    assert request.partition_key == "2026-01-01-13:00"
    next_day = datetime(2026, 1, 2, 1, 30, tzinfo=UTC)
    day = daily_archive(build_schedule_context(scheduled_execution_time=next_day))
    assert day.partition_key == "2026-01-01"
    # A lag longer than an hour still picks the last hour that closed that long ago.
    assert hour_due(datetime(2026, 1, 1, 14, 15, tzinfo=UTC), 75) == "2026-01-01-12:00"


def test_resources_are_chosen_per_deployment():
    local = resources_for(Settings(deployment="local"))
    cluster = resources_for(Settings(deployment="cluster"))
    assert set(local) == set(cluster) == {"warehouse", "archive_store", "control_plane"}
    assert isinstance(local["archive_store"], ArchiveStoreResource)
    assert local["archive_store"].credentials == "static"
    assert local["archive_store"].create_missing_keys
    assert cluster["archive_store"].credentials == "default_chain"
    assert not cluster["archive_store"].create_missing_keys


def test_loading_the_definitions_does_not_import_great_expectations():
    code = "import sys, dagster_project.definitions; print('great_expectations' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
