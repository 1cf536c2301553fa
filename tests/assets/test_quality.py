"""The freshness check of the source, the coverage asset and the rollup's expectations, each on
a database of its own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dagster import AssetSelection

from assets.partitions import floor_hour, hour_key
from assets.rollups.compute import REPORTED_DELTA, read_rollup
from byoc_platform.control_plane.client import ControlPlaneClient
from byoc_platform.warehouse_schema import apply_migrations
from tests.assets.conftest import checks, metadata, run
from tests.assets.usage_data import (
    EVENT_COLUMNS,
    Event,
    Report,
    fresh_hour,
    insert_events,
    insert_reports,
    make_events,
    settings_file,
)

pytestmark = pytest.mark.integration

ROLLUP = AssetSelection.assets("hourly_usage_rollup")  # with its checks
ROLLUP_AND_PUBLISH = AssetSelection.assets("hourly_usage_rollup", "published_usage")


@pytest.fixture
def own_database(infra, ch, tmp_path):
    """A settings file whose warehouse database holds only this test's rows."""
    db = f"quality_{uuid.uuid4().hex[:8]}"
    apply_migrations(ch, db)
    try:
        yield db, settings_file(tmp_path, infra.settings, clickhouse={"database": db})
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {db}")


def test_freshness_check_fails_on_a_silent_source_and_passes_on_a_flowing_one(ch, own_database):
    db, config = own_database
    freshness = AssetSelection.checks_for_assets("usage_events")

    empty = checks(run(freshness, None, config))["usage_events_freshness"]
    assert not empty.passed and "empty" in empty.description

    old = datetime.now(UTC) - timedelta(hours=3)
    ch.insert(
        f"{db}.usage_events",
        [["env", "c", "", "api_call", "k-old", old, old, {}, {}, "{}"]],
        column_names=EVENT_COLUMNS,
    )
    stale = checks(run(freshness, None, config))["usage_events_freshness"]
    assert not stale.passed and stale.metadata["lag_minutes"].value > 170

    insert_events(ch, db, "env", make_events(datetime.now(UTC), 1, seed=1))  # ingested now
    fresh = checks(run(freshness, None, config))["usage_events_freshness"]
    assert fresh.passed and fresh.metadata["lag_minutes"].value < 60


def test_coverage_reports_hours_not_rolled_up_and_stale_after_late_events(env, ch, own_database):
    db, config = own_database
    now = floor_hour(datetime.now(UTC))
    rolled, missed = now - timedelta(hours=3), now - timedelta(hours=5)
    reported = now - timedelta(hours=7)  # usage reports only, never rolled up
    for hour in (rolled, missed):
        insert_events(ch, db, env, make_events(hour, 20, seed=hour.hour))
    insert_reports(
        ch, db, env, [Report("cust-0", "feature-agent-steps", 1.0, reported) for _ in range(2)]
    )
    assert run(
        AssetSelection.assets("hourly_usage_rollup").without_checks(), hour_key(rolled), config
    ).success
    # A late event lands in the rolled-up hour afterwards.
    ch.insert(
        f"{db}.late_hours",
        [[env, rolled, datetime.now(UTC)]],
        column_names=["environment", "hour", "recorded_at"],
    )

    result = run(AssetSelection.assets("pipeline_coverage"), None, config)

    assert result.success
    meta = metadata(result, "pipeline_coverage")
    assert meta["hours_with_events"] == 2
    assert meta["hours_with_reports"] == 1
    assert meta["hours_not_rolled_up"] == 2
    assert meta["hours_stale_after_late_events"] == 1
    assert meta["hours_archived"] == 0
    table = meta["hours"]
    assert f"| {missed:%Y-%m-%d %H}:00 | 20 | 0 | NO |" in table
    assert f"| {rolled:%Y-%m-%d %H}:00 | 20 | 0 | yes | STALE |" in table
    assert f"| {reported:%Y-%m-%d %H}:00 | 0 | 2 | NO |" in table


def test_rollup_expectations_accept_the_kept_meters_of_a_deleted_feature(
    infra, env, ch, own_database
):
    """A re-rollup keeps the meters of features deleted since the hour was billed (F36); the
    suite allowed only the catalog's features and failed on them (F63)."""
    db, config = own_database
    hour = fresh_hour()
    insert_events(ch, db, env, make_events(hour, 40, seed=31))
    first = run(ROLLUP, hour_key(hour), config)
    assert first.success and checks(first)["rollup_expectations"].passed
    with ControlPlaneClient.from_settings(infra.settings) as cp:
        assert cp.delete_entity(env, "feature", "feature-tokens") is not None

    again = run(ROLLUP, hour_key(hour), config)

    assert again.success
    assert "feature-tokens" in {r.feature_id for r in read_rollup(ch, db, hour)}
    expectations = checks(again)["rollup_expectations"]
    assert expectations.passed, expectations.metadata["results"].value


def test_rollup_expectations_fail_on_an_empty_key(env, ch, own_database):
    """Keys are non-Nullable strings: a missing customer is '', which "not null" let through
    (F64)."""
    db, config = own_database
    hour = fresh_hour()
    nobody = Event("", "api_call", "k-no-customer", hour + timedelta(minutes=5))
    insert_events(ch, db, env, [*make_events(hour, 10, seed=41), nobody])

    result = run(ROLLUP, hour_key(hour), config)

    expectations = checks(result)["rollup_expectations"]
    assert not expectations.passed
    failed = [r for r in expectations.metadata["results"].value if not r["success"]]
    assert [(r["expectation"], r["column"]) for r in failed] == [
        ("expect_column_value_lengths_to_be_between", "customer_id")
    ]


def test_rollup_expectations_allow_negative_reported_deltas_only(env, ch, own_database):
    """A DELTA report may give usage back, so a reported hour may sum below 0; a meter's
    hourly value may not."""
    db, config = own_database
    hour = fresh_hour()
    at = hour + timedelta(minutes=5)
    insert_events(ch, db, env, [Event("cust-0", "llm.tokens", "k-neg", at, values={"tokens": -5})])
    insert_reports(ch, db, env, [Report("cust-1", "feature-agent-steps", -2.0, at)])

    result = run(ROLLUP, hour_key(hour), config)

    rows = {(r.aggregation, r.value) for r in read_rollup(ch, db, hour)}
    assert {(REPORTED_DELTA, -2.0), ("SUM", -5.0)} <= rows
    expectations = checks(result)["rollup_expectations"]
    failed = [r for r in expectations.metadata["results"].value if not r["success"]]
    assert [(r["column"], r["unexpected_count"]) for r in failed] == [("value", 1)]
    assert failed[0]["partial_unexpected_list"] == [-5.0]


def test_rollup_expectations_accept_the_billed_reports_of_a_deleted_feature(
    infra, env, ch, own_database
):
    """Reports record no meter, so the kept meters (F63) do not allow a reported feature
    deleted since: the control plane's acknowledgement of its usage does."""
    db, config = own_database
    hour = fresh_hour()
    insert_reports(ch, db, env, [Report("cust-0", "feature-agent-steps", 3.0, hour)])
    first = run(ROLLUP_AND_PUBLISH, hour_key(hour), config)
    assert first.success and checks(first)["rollup_expectations"].passed
    with ControlPlaneClient.from_settings(infra.settings) as cp:
        assert cp.delete_entity(env, "feature", "feature-agent-steps") is not None

    again = run(ROLLUP, hour_key(hour), config)

    assert again.success
    assert "feature-agent-steps" in {r.feature_id for r in read_rollup(ch, db, hour)}
    expectations = checks(again)["rollup_expectations"]
    assert expectations.passed, expectations.metadata["results"].value
