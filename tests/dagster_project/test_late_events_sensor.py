"""The late-events sensor against the real warehouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import SkipReason, build_sensor_context

from assets.partitions import day_key, hour_key
from assets.resources import WarehouseResource
from dagster_project.sensors import late_events_sensor
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
    assert result.cursor > cursor

    # Nothing of ours since: the next evaluation asks for none of these hours again (other
    # tests of the session may record late hours of their own meanwhile).
    again = late_events_sensor(
        build_sensor_context(cursor=result.cursor, resources={"warehouse": warehouse})
    )
    assert isinstance(again, SkipReason) or all(
        r.partition_key not in {hour_key(h) for h in plain_hours} for r in again.run_requests
    )
