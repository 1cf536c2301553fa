"""The late-events sensor: re-materializes the hours (and archived days) late events touched.

The stream processor records every hour a late event lands in (``late_hours``, with the
receive time of the record). The sensor reads the rows recorded since its cursor and asks for
a rollup + publish of each closed hour (the publish sends only the difference), and for a new
archive of each day that was already archived (so retention never drops unarchived rows).
"""

from datetime import UTC, datetime, timedelta

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import HOURLY, day_key, hour_key
from assets.resources import WarehouseResource
from dagster_project.jobs import archive_job, rollup_and_publish_job

BATCH = 1000


@sensor(
    name="late_events",
    jobs=[rollup_and_publish_job, archive_job],
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Re-rolls up (and re-publishes the difference of) hours touched by late "
    "events; re-archives days already archived.",
)
def late_events_sensor(
    context: SensorEvaluationContext, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    cursor = context.cursor or "1970-01-01 00:00:00.000"
    lag = timedelta(minutes=warehouse.settings.retention.rollup_lag_minutes)
    now = datetime.now(UTC)
    with warehouse.client() as client:
        db = warehouse.database
        rows = client.query(
            f"SELECT environment, hour, recorded_at FROM {db}.late_hours FINAL "
            "WHERE recorded_at > {cursor:DateTime64(3, 'UTC')} "
            "ORDER BY recorded_at LIMIT {n:UInt32}",
            parameters={"cursor": cursor, "n": BATCH},
        ).result_rows
        if not rows:
            return SkipReason("no late events since the last evaluation")
        hours: dict[datetime, datetime] = {}
        for _env, hour, recorded_at in rows:
            hour = hour.replace(tzinfo=UTC)
            hours[hour] = max(hours.get(hour, recorded_at), recorded_at)
        days = sorted({h.replace(hour=0) for h in hours})
        archived_days = {
            d[0]
            for d in client.query(
                f"SELECT DISTINCT toDate(hour) FROM {db}.archive_manifests FINAL "
                "WHERE toDate(hour) IN {days:Array(Date)} AND status = 'verified'",
                parameters={"days": [d.date() for d in days]},
            ).result_rows
        }
    first = HOURLY.get_first_partition_window()
    requests = []
    for hour, recorded_at in sorted(hours.items()):
        # Hours not closed yet (or within the lag) are left to the hourly schedule.
        if hour + timedelta(hours=1) + lag > now or (first and hour < first.start):
            continue
        key = hour_key(hour)
        requests.append(
            RunRequest(
                job_name=rollup_and_publish_job.name,
                partition_key=key,
                run_key=f"late:{key}:{recorded_at:%Y%m%dT%H%M%S%f}",
                tags={"byoc/trigger": "late-events"},
            )
        )
    for day in days:
        if day.date() in archived_days:
            key = day_key(day)
            newest = max(r for h, r in hours.items() if h.date() == day.date())
            requests.append(
                RunRequest(
                    job_name=archive_job.name,
                    partition_key=key,
                    run_key=f"late-archive:{key}:{newest:%Y%m%dT%H%M%S%f}",
                    tags={"byoc/trigger": "late-events"},
                )
            )
    new_cursor = max(r[2] for r in rows).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    context.log.info("late events: %d hours, %d runs requested", len(hours), len(requests))
    return SensorResult(run_requests=requests, cursor=new_cursor)


SENSORS = [late_events_sensor]
