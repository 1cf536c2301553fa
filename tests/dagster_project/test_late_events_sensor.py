"""The late-events sensor against the real warehouse."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from dagster import SkipReason, build_sensor_context

from assets.partitions import day_key, hour_key
from assets.resources import WarehouseResource
from byoc_platform import clients
from dagster_project.sensors import late_events_sensor
from streaming.engine import LATE_HOUR_COLUMNS, LateHourRow
from streaming.processor.warehouse_sink import LATE_HOURS_TABLE, WarehouseSink, encode_late_hours
from tests.assets.conftest import run
from tests.assets.usage_data import fresh_day, insert_events, make_events

pytestmark = pytest.mark.integration


def _late(ch, env, hours, recorded_at):
    ch.insert(
        "byoc.late_hours",
        [[env, h, recorded_at] for h in hours],
        column_names=["environment", "hour", "recorded_at"],
    )


def test_sensor_requests_rollups_of_late_hours_and_archives_of_archived_days(env, ch, config_file):
    from dagster import AssetSelection

    archived_day, plain_day = fresh_day(), fresh_day()
    archived_hour = archived_day + timedelta(hours=5)
    insert_events(ch, "byoc", env, make_events(archived_hour, 5, seed=1))
    assert run(AssetSelection.assets("cold_archive"), day_key(archived_day), config_file).success
    plain_hours = [plain_day + timedelta(hours=h) for h in (2, 3)]
    open_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # not closed
    recorded = datetime.now(UTC)
    cursor = (recorded - timedelta(milliseconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    _late(ch, env, [archived_hour, *plain_hours, open_hour], recorded)
    warehouse = WarehouseResource(config_file=config_file)

    result = late_events_sensor(
        build_sensor_context(cursor=cursor, resources={"warehouse": warehouse})
    )

    requests = {(r.job_name, r.partition_key) for r in result.run_requests}
    assert {("rollup_and_publish", hour_key(h)) for h in [archived_hour, *plain_hours]} <= requests
    assert ("daily_archive", day_key(archived_day)) in requests
    assert ("daily_archive", day_key(plain_day)) not in requests
    assert ("rollup_and_publish", hour_key(open_hour)) not in requests  # the schedule's job
    assert all(r.tags["byoc/trigger"] == "late-events" for r in result.run_requests)
    assert json.loads(result.cursor)["at"] > cursor

    # Nothing of ours since: the next evaluation asks for none of these hours again (other
    # tests of the session may record late hours of their own meanwhile).
    again = late_events_sensor(
        build_sensor_context(cursor=result.cursor, resources={"warehouse": warehouse})
    )
    assert isinstance(again, SkipReason) or all(
        r.partition_key not in {hour_key(h) for h in plain_hours} for r in again.run_requests
    )


def _tick(warehouse, cursor):
    result = late_events_sensor(
        build_sensor_context(cursor=cursor, resources={"warehouse": warehouse})
    )
    if isinstance(result, SkipReason):
        return {}, cursor
    runs = {
        r.partition_key: r.run_key for r in result.run_requests if r.job_name != "daily_archive"
    }
    return runs, result.cursor


def test_a_row_written_after_a_newer_one_is_still_picked_up(env, ch, config_file):
    """F70: the cursor is the newest recorded_at seen, but recorded_at is the receive time:
    a row written after a row with a newer recorded_at (the partitions flush apart, a replay)
    landed below the cursor and its hour was never rolled up again."""
    day = fresh_day()
    first, second = day + timedelta(hours=3), day + timedelta(hours=4)
    now = datetime.now(UTC)
    cursor = (now - timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    warehouse = WarehouseResource(config_file=config_file)
    _late(ch, env, [first], now - timedelta(seconds=10))  # one partition's flush
    runs, cursor = _tick(warehouse, cursor)
    assert hour_key(first) in runs

    # Another partition's flush lands afterwards, received earlier (below the cursor): for a
    # new hour, and for the hour already asked for (another environment).
    _late(ch, env, [second], now - timedelta(seconds=40))
    _late(ch, f"{env}-b", [first], now - timedelta(seconds=30))
    again, cursor = _tick(warehouse, cursor)

    assert hour_key(second) in again
    assert hour_key(first) in again and again[hour_key(first)] != runs[hour_key(first)]
    # Rows already handled are not asked for again.
    third, _ = _tick(warehouse, cursor)
    assert not {hour_key(first), hour_key(second)} & set(third)


def test_a_row_of_an_hour_already_handled_written_later_is_picked_up(env, ch, config_file, infra):
    """A second row for an (environment, hour) the sensor already asked for, written by the
    processor afterwards with an OLDER receive time (a replay after a crash): late_hours keeps
    the newest recorded_at per (environment, hour), so with recorded_at = receive time the new
    row was hidden under FINAL and the usage it stands for never rolled up. recorded_at is the
    write time now: the row replaces the first and the hour is asked for again."""
    first = fresh_day() + timedelta(hours=3)
    now = datetime.now(UTC)
    cursor = (now - timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    warehouse = WarehouseResource(config_file=config_file)
    _late(ch, env, [first], now - timedelta(seconds=10))
    runs, cursor = _tick(warehouse, cursor)
    assert hour_key(first) in runs

    settings = infra.settings
    sink = WarehouseSink(lambda: clients.clickhouse(settings), "byoc", threading.Event())
    received = int((now - timedelta(seconds=30)).timestamp() * 1000)
    row = LateHourRow(env, int(first.timestamp() * 1000), received)
    sink.insert(LATE_HOURS_TABLE, LATE_HOUR_COLUMNS, encode_late_hours([row]), "t")
    again, _ = _tick(warehouse, cursor)

    assert hour_key(first) in again and again[hour_key(first)] != runs[hour_key(first)]
