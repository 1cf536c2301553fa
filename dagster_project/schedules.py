"""Schedules: hourly rollup + publish (after a lag for late events), daily archive, retention."""

from datetime import timedelta

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

from assets.partitions import day_key, floor_hour, hour_key
from byoc_platform.settings import Settings
from dagster_project.jobs import archive_job, retention_job, rollup_and_publish_job


def hour_due(scheduled: object, lag_minutes: int) -> str:
    """The hour a tick at ``scheduled`` rolls up: the last one closed ``lag_minutes`` ago."""
    from datetime import datetime

    assert isinstance(scheduled, datetime)
    return hour_key(floor_hour(scheduled - timedelta(minutes=lag_minutes)) - timedelta(hours=1))


def schedules_for(settings: Settings) -> list[ScheduleDefinition]:
    lag = settings.retention.rollup_lag_minutes

    @schedule(
        name="hourly_rollup_and_publish",
        job=rollup_and_publish_job,
        cron_schedule=f"{lag % 60} * * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Every hour, {lag} min after it closes (late events), roll up and publish.",
    )
    def hourly(context: ScheduleEvaluationContext) -> RunRequest:
        key = hour_due(context.scheduled_execution_time, lag)
        return RunRequest(run_key=key, partition_key=key)

    @schedule(
        name="daily_archive",
        job=archive_job,
        cron_schedule="30 1 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Every day at 01:30 UTC, archive the previous day.",
    )
    def daily_archive(context: ScheduleEvaluationContext) -> RunRequest:
        key = day_key(context.scheduled_execution_time - timedelta(days=1))
        return RunRequest(run_key=key, partition_key=key)

    daily_retention = ScheduleDefinition(
        name="daily_retention",
        job=retention_job,
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Every day at 03:00 UTC, apply the retention policies.",
    )
    return [hourly, daily_archive, daily_retention]
