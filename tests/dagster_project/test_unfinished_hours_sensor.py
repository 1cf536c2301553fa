"""The unfinished-hours sensor against the real warehouse: it retries the hours a failed run
left behind (F66: an outage longer than the publish's retries left an hour unbilled)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import AssetSelection, DagsterInstance, SkipReason, build_sensor_context

from assets.partitions import floor_hour, hour_key
from assets.publish.ledger import plan, read_ledger, record
from assets.resources import WarehouseResource
from assets.rollups.compute import read_rollup
from dagster_project.sensors import RETRY_LOOKBACK, unfinished_hours_sensor
from tests.assets.conftest import run
from tests.assets.usage_data import insert_events, make_events

pytestmark = pytest.mark.integration

ROLLUP_AND_PUBLISH = AssetSelection.assets("hourly_usage_rollup", "published_usage")


def _requested(warehouse: WarehouseResource, cursor: str | None = None):
    with DagsterInstance.ephemeral() as instance:
        result = unfinished_hours_sensor(
            build_sensor_context(
                cursor=cursor, instance=instance, resources={"warehouse": warehouse}
            )
        )
    if isinstance(result, SkipReason):
        return {}, cursor
    return {r.partition_key: r for r in result.run_requests}, result.cursor


def test_sensor_retries_hours_left_pending_or_not_rolled_up(infra, env, ch, config_file):
    # The oldest hours of the sensor's window, so they come first in its bounded batch.
    oldest = floor_hour(datetime.now(UTC)) - RETRY_LOOKBACK
    pending_hour, unrolled_hour = oldest + timedelta(hours=1), oldest + timedelta(hours=2)
    insert_events(ch, "byoc", env, make_events(pending_hour, 40, seed=31))
    insert_events(ch, "byoc", env, make_events(unrolled_hour, 40, seed=32))
    # The publish of pending_hour failed after recording its revisions (the control plane
    # was unreachable for longer than the sender's and the step's retries).
    assert run(
        AssetSelection.assets("hourly_usage_rollup"), hour_key(pending_hour), config_file
    ).success
    targets = {r.key: r.value for r in read_rollup(ch, "byoc", pending_hour)}
    todo = plan(pending_hour, targets, read_ledger(ch, "byoc", pending_hour))
    record(ch, "byoc", todo.new, "pending")
    warehouse = WarehouseResource(config_file=config_file)

    requested, cursor = _requested(warehouse)

    assert {hour_key(pending_hour), hour_key(unrolled_hour)} <= set(requested)
    request = requested[hour_key(pending_hour)]
    assert request.job_name == "rollup_and_publish"
    assert request.tags["byoc/trigger"] == "unfinished-hour"
    # Within the same attempt window the same hours are not asked for again.
    again, _ = _requested(warehouse, cursor)
    assert not {hour_key(pending_hour), hour_key(unrolled_hour)} & set(again)

    # The requested runs succeed: nothing is left to retry for these hours.
    for hour in (pending_hour, unrolled_hour):
        assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    assert all(e.status == "sent" for e in read_ledger(ch, "byoc", pending_hour))

    after, _ = _requested(warehouse)

    assert not {hour_key(pending_hour), hour_key(unrolled_hour)} & set(after)
