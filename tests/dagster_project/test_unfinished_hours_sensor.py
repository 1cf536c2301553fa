"""The unfinished-hours sensor against the real warehouse: it retries the hours a failed run
left behind (F66: an outage longer than the publish's retries left an hour unbilled)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from dagster import AssetSelection, DagsterInstance, SkipReason, build_sensor_context

from assets.partitions import floor_hour, hour_key
from assets.publish.ledger import Entry, plan, read_ledger, record
from assets.resources import WarehouseResource
from assets.rollups.compute import read_rollup
from assets.warehouse_tables import ensure_tables
from dagster_project.sensors import (
    RETRIES_PER_TICK,
    RETRY_LOOKBACK,
    RETRY_SETTLE,
    unfinished_hours,
    unfinished_hours_sensor,
)
from tests.assets.conftest import run
from tests.assets.usage_data import Report, fresh_hour, insert_events, insert_reports, make_events

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


def _pending(client, env: str, hour: datetime) -> None:
    """A usage of ``hour`` the control plane has not acknowledged (e.g. refused for ever)."""
    entry = Entry(env, "c-refused", "", "f-calls", hour, 1, 1.0, 1.0, f"{env}:{hour_key(hour)}", "")
    record(client, "byoc", [entry], "pending")


def test_hours_that_keep_failing_do_not_starve_newer_ones(env, config_file):
    """The tried hours were forgotten at each new window and the oldest asked for first: with
    more hours failing for ever than one window's ticks take (12 x 4), a newer hour left
    unfinished by an outage was never retried while the older ones kept failing."""
    oldest = floor_hour(datetime.now(UTC)) - RETRY_LOOKBACK
    failing = [oldest + timedelta(hours=h) for h in range(RETRIES_PER_TICK + 2)]
    newer = [oldest + timedelta(hours=h) for h in (40, 41)]
    warehouse = WarehouseResource(config_file=config_file)
    now = datetime.now(UTC)
    lag = timedelta(minutes=warehouse.settings.retention.rollup_lag_minutes)
    with warehouse.client() as client:  # creates the tables
        for hour in failing + newer:
            _pending(client, env, hour)
        end = floor_hour(now - lag - RETRY_SETTLE)
        unfinished = unfinished_hours(client, "byoc", oldest, end)
    assert set(failing + newer) <= set(unfinished)
    # The previous window asked for every unfinished hour but the newer ones.
    previous = hour_key(floor_hour(now) - timedelta(hours=1))
    tried = sorted(hour_key(h) for h in unfinished if h not in newer)
    cursor = json.dumps({"window": previous, "tried": tried})

    requested, _ = _requested(warehouse, cursor)

    assert {hour_key(h) for h in newer} <= set(requested)


def test_an_hour_with_only_usage_reports_is_unfinished_until_rolled_up(env, ch, config_file):
    hour = fresh_hour()
    end = hour + timedelta(hours=1)
    ensure_tables(ch, "byoc")  # the rollup's tables, as the sensor's resource has them
    insert_reports(ch, "byoc", env, [Report("cust-0", "feature-agent-steps", 2.0, hour)])

    assert unfinished_hours(ch, "byoc", hour, end) == [hour]
    assert run(AssetSelection.assets("hourly_usage_rollup"), hour_key(hour), config_file).success
    assert unfinished_hours(ch, "byoc", hour, end) == []
