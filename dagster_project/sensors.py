"""The late-events sensor: re-materializes the hours (and archived days) late events touched.

The stream processor records every hour a late event lands in (``late_hours``, with the
time the row was written). The sensor reads the rows recorded since its cursor and asks for
a rollup + publish of each closed hour (the publish sends only the difference), and for a new
archive of each day that was already archived (so retention never drops unarchived rows).

The unfinished-hours sensor retries what a failed run left behind (a control-plane outage
longer than the publish's own retries, a catalog read that failed during a rollup): recent
hours with usage still pending in the publish ledger, or with events but no rollup.
"""

import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import HOURLY, ch_time, day_key, floor_hour, hour_key
from assets.resources import WarehouseResource
from dagster_project.jobs import archive_job, rollup_and_publish_job

BATCH = 1000
CURSOR_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# How far below its cursor the late-events sensor reads again, for rows written late.
LATE_OVERLAP = timedelta(minutes=15)
PARTITION_TAG = "dagster/partition"  # the tag Dagster gives a partitioned run


def ch_time64(moment: datetime) -> str:
    return moment.strftime(CURSOR_FORMAT)[:-3]


def late_rows(client: Any, db: str, cursor: str) -> list[tuple[str, datetime, datetime]]:
    """The ``late_hours`` rows recorded after ``cursor`` (a batch, oldest first), plus those
    recorded up to ``LATE_OVERLAP`` before it. ``recorded_at`` is the time the row was
    written (so a row written after another of its hour replaces it under FINAL with a newer
    time), stamped by each writer's clock: the overlap covers writes that commit out of that
    order (concurrent inserts, writers' clocks apart, rows inserted directly), so a row can
    land below a cursor that has moved on."""
    query = (
        f"SELECT environment, hour, recorded_at FROM {db}.late_hours FINAL "
        "WHERE recorded_at > {since:DateTime64(3, 'UTC')} "
        "AND recorded_at <= {until:DateTime64(3, 'UTC')} "
        "ORDER BY recorded_at LIMIT {n:UInt32}"
    )
    rows = []
    for since, until in ((overlap_start(cursor), cursor), (cursor, "2299-12-31 23:59:59.999")):
        rows += client.query(
            query, parameters={"since": since, "until": until, "n": BATCH}
        ).result_rows
    return [(env, hour.replace(tzinfo=UTC), at.replace(tzinfo=UTC)) for env, hour, at in rows]


def overlap_start(cursor: str) -> str:
    at = datetime.strptime(cursor, CURSOR_FORMAT).replace(tzinfo=UTC)
    return ch_time64(max(at - LATE_OVERLAP, datetime(1970, 1, 1, tzinfo=UTC)))


def row_id(row: tuple[str, datetime, datetime]) -> str:
    env, hour, recorded_at = row
    return f"{env}|{hour:%Y%m%dT%H}|{recorded_at:%Y%m%dT%H%M%S%f}"


def read_cursor(cursor: str | None) -> tuple[str, set[str]]:
    """(newest recorded_at seen, rows already handled within the overlap). A plain timestamp
    is the cursor of the sensor before it read an overlap."""
    if not cursor:
        return "1970-01-01 00:00:00.000", set()
    if not cursor.startswith("{"):
        return cursor, set()
    state = json.loads(cursor)
    return state["at"], set(state["seen"])


def run_key(prefix: str, key: str, rows: list[tuple[str, datetime, datetime]]) -> str:
    """Unique per set of new rows: a row written late for an hour already asked for (with a
    newer recorded_at) still gets a run."""
    newest = max(r[2] for r in rows)
    digest = hashlib.sha256("\n".join(sorted(map(row_id, rows))).encode()).hexdigest()[:12]
    return f"{prefix}:{key}:{newest:%Y%m%dT%H%M%S%f}:{digest}"


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
    cursor, seen = read_cursor(context.cursor)
    lag = timedelta(minutes=warehouse.settings.retention.rollup_lag_minutes)
    now = datetime.now(UTC)
    with warehouse.client() as client:
        db = warehouse.database
        read = late_rows(client, db, cursor)
        rows = [r for r in read if row_id(r) not in seen]
        if not rows:
            return SkipReason("no late events since the last evaluation")
        by_hour: dict[datetime, list[tuple[str, datetime, datetime]]] = defaultdict(list)
        for row in rows:
            by_hour[row[1]].append(row)
        days = sorted({h.replace(hour=0) for h in by_hour})
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
    for hour, hour_rows in sorted(by_hour.items()):
        # Hours not closed yet (or within the lag) are left to the hourly schedule.
        if hour + timedelta(hours=1) + lag > now or (first and hour < first.start):
            continue
        key = hour_key(hour)
        requests.append(
            RunRequest(
                job_name=rollup_and_publish_job.name,
                partition_key=key,
                run_key=run_key("late", key, hour_rows),
                tags={"byoc/trigger": "late-events"},
            )
        )
    for day in days:
        if day.date() in archived_days:
            key = day_key(day)
            day_rows = [r for r in rows if r[1].date() == day.date()]
            requests.append(
                RunRequest(
                    job_name=archive_job.name,
                    partition_key=key,
                    run_key=run_key("late-archive", key, day_rows),
                    tags={"byoc/trigger": "late-events"},
                )
            )
    newest = ch_time64(max(r[2] for r in rows))
    new_cursor = max(cursor, newest)  # rows of the overlap alone never move it back
    # Remember the rows handled that the next evaluation's overlap reads again.
    since = overlap_start(new_cursor)
    handled = {row_id(r) for r in read if ch_time64(r[2]) > since}
    context.log.info("late events: %d hours, %d runs requested", len(by_hour), len(requests))
    return SensorResult(
        run_requests=requests, cursor=json.dumps({"at": new_cursor, "seen": sorted(handled)})
    )


# The retry sensor looks this far back: an hour still unfinished after a week needs a person.
RETRY_LOOKBACK = timedelta(days=7)
# An hour is retried only this long after its scheduled run (lag included) could have
# finished, so that the sensor never races the hourly schedule or its step retries.
RETRY_SETTLE = timedelta(hours=1)
# At most this many hours per tick, least recently tried first, then oldest first: a long
# outage is caught up gradually.
RETRIES_PER_TICK = 4
ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def unfinished_hours(client: Any, db: str, start: datetime, end: datetime) -> list[datetime]:
    """Hours in [start, end), oldest first, with usage the control plane has not acknowledged
    (``pending`` rows of the publish ledgers) or with raw events or usage reports but no rollup
    revision (a rollup that failed, e.g. while the catalog was unreachable). The raw events,
    not usage_minute: they are what the rollup reads, and a restore writes only them; a scan
    of one column of a week of them every 5 minutes (~0.6 G rows at 1,000 events/s)."""
    bounds = {"start": ch_time(start), "end": ch_time(end)}
    rows = client.query(
        f"""
        SELECT hour FROM (
            SELECT hour, status FROM {db}.usage_published FINAL
            WHERE hour >= {{start:DateTime('UTC')}} AND hour < {{end:DateTime('UTC')}}
        )
        WHERE status = 'pending'
        UNION DISTINCT
        SELECT hour FROM (
            SELECT hour, status FROM {db}.usage_published_levels FINAL
            WHERE hour >= {{start:DateTime('UTC')}} AND hour < {{end:DateTime('UTC')}}
        )
        WHERE status = 'pending'
        UNION DISTINCT
        SELECT toStartOfHour(toDateTime(event_time, 'UTC')) AS hour FROM {db}.usage_events
        WHERE event_time >= {{start:DateTime('UTC')}} AND event_time < {{end:DateTime('UTC')}}
          AND hour NOT IN (
            SELECT hour FROM {db}.usage_hourly_revisions
            WHERE hour >= {{start:DateTime('UTC')}} AND hour < {{end:DateTime('UTC')}}
          )
        UNION DISTINCT
        SELECT toStartOfHour(toDateTime(report_time, 'UTC')) AS hour FROM {db}.usage_reports
        WHERE report_time >= {{start:DateTime('UTC')}} AND report_time < {{end:DateTime('UTC')}}
          AND hour NOT IN (
            SELECT hour FROM {db}.usage_hourly_revisions
            WHERE hour >= {{start:DateTime('UTC')}} AND hour < {{end:DateTime('UTC')}}
          )
        """,
        parameters=bounds,
    ).result_rows
    return sorted({r[0].replace(tzinfo=UTC) for r in rows})


def last_tried(cursor: str | None) -> dict[str, str]:
    """Hour key -> the window (hour key) of its last request. The first cursor of this sensor
    listed the hours tried in one window: ``{"window": w, "tried": [hour, ...]}``."""
    state = json.loads(cursor) if cursor else {}
    tried = state.get("tried", {})
    if isinstance(tried, list):
        return dict.fromkeys(tried, state.get("window", ""))
    return dict(tried)


def partitions_in_progress(context: SensorEvaluationContext) -> set[str]:
    """Hours a rollup + publish run is already queued or running for."""
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=rollup_and_publish_job.name, statuses=ACTIVE)
    )
    return {r.tags[PARTITION_TAG] for r in runs if PARTITION_TAG in r.tags}


@sensor(
    name="unfinished_hours",
    jobs=[rollup_and_publish_job],
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Re-runs the rollup + publish of recent hours left unfinished by a failed run "
    "(usage not acknowledged by the control plane, or events never rolled up), least recently "
    "tried first.",
)
def unfinished_hours_sensor(
    context: SensorEvaluationContext, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    now = datetime.now(UTC)
    lag = timedelta(minutes=warehouse.settings.retention.rollup_lag_minutes)
    end = floor_hour(now - lag - RETRY_SETTLE)  # hours that closed lag + settle ago, exclusive
    start = floor_hour(now) - RETRY_LOOKBACK
    first = HOURLY.get_first_partition_window()
    if first:
        start = max(start, first.start)
    with warehouse.client() as client:
        hours = unfinished_hours(client, warehouse.database, start, end)
    if not hours:
        return SkipReason("no unfinished hours")
    # One attempt per hour and per window (the current hour), least recently tried first: the
    # cursor remembers the window of each hour's last request, so that hours that keep failing
    # (more than a window's ticks take) do not hold back the rest, window after window.
    window = hour_key(floor_hour(now))
    last = last_tried(context.cursor)
    busy = partitions_in_progress(context)
    keys = [hour_key(h) for h in hours]  # oldest first: sorted() keeps it among equals
    todo = sorted(
        (k for k in keys if last.get(k) != window and k not in busy), key=lambda k: last.get(k, "")
    )[:RETRIES_PER_TICK]
    last.update(dict.fromkeys(todo, window))
    requests = [
        RunRequest(
            job_name=rollup_and_publish_job.name,
            partition_key=key,
            run_key=f"retry:{key}:{window}",
            tags={"byoc/trigger": "unfinished-hour"},
        )
        for key in todo
    ]
    context.log.info("unfinished hours: %d, %d runs requested", len(hours), len(requests))
    # Only hours still unfinished are remembered: the cursor stays within the lookback.
    cursor = json.dumps({"tried": {k: last[k] for k in keys if k in last}})
    return SensorResult(run_requests=requests, cursor=cursor)


SENSORS = [late_events_sensor, unfinished_hours_sensor]
