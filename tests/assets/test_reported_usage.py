"""Usage reported as aggregates (reportUsage) is rolled up, reconciled and published.

The reports are rows of ``usage_reports`` as the stream processor stores them (its loader is
tested in tests/streaming/processor/); here the real warehouse and control plane do the rest,
and the last test follows reports from the official SDK to the control plane through the stack.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import AssetSelection
from stigg._client import Stigg

from assets.partitions import hour_key
from assets.quality.reconciliation import reconcile
from assets.rollups.compute import REPORTED_DELTA, REPORTED_SET, read_rollup
from byoc_platform.catalog import Customer
from byoc_platform.control_plane.client import ControlPlaneClient
from byoc_platform.stack.supervisor import Supervisor
from tests.assets.conftest import checks, metadata, run
from tests.assets.test_publish import control_plane_records, control_plane_totals
from tests.assets.usage_data import (
    FEATURES,
    Event,
    Report,
    fresh_hour,
    insert_events,
    insert_reports,
    settings_file,
)
from tests.streaming.ingest.harness import start_api
from tests.streaming.processor.harness import isolated_settings

pytestmark = pytest.mark.integration

ROLLUP = AssetSelection.assets("hourly_usage_rollup")
ROLLUP_AND_PUBLISH = AssetSelection.assets("hourly_usage_rollup", "published_usage")
STEPS = "feature-agent-steps"
SEATS = "feature-seats"
CALLS = "feature-api-calls"  # a COUNT meter of "api_call" events


def _rows(ch, env, hour) -> dict[tuple[str, str, str, str], float]:
    return {
        (r.customer_id, r.resource_id, r.feature_id, r.aggregation): r.value
        for r in read_rollup(ch, "byoc", hour)
        if r.environment == env
    }


def test_reports_are_rolled_up_reconciled_and_published_once(infra, env, ch, config_file):
    hour = fresh_hour()
    at = hour + timedelta(minutes=10)
    twice = Report("cust-0", STEPS, 5.0, at)
    reused = Report("cust-0", STEPS, 7.0, at + timedelta(minutes=1))
    insert_reports(
        ch,
        "byoc",
        env,
        [
            twice,
            twice,  # the same record read twice from the log
            reused,
            # The same id logged again later (a reused idempotency key) with another value:
            # only its first receipt counts, as in the enforcement counters.
            Report(
                "cust-0",
                STEPS,
                700.0,
                at,
                report_id=reused.report_id,
                received_at=at + timedelta(minutes=30),
            ),
            Report("cust-0", STEPS, -2.5, at + timedelta(minutes=2)),  # a negative DELTA
            Report("cust-3", STEPS, -1.0, at),  # an hour that gives usage back
            Report("cust-0", STEPS, 4.0, at, resource_id="team-a"),
            Report("cust-1", STEPS, 1.25, hour + timedelta(minutes=59, seconds=59)),
            # Levels: the last SET of the hour (by createdAt) is the row, sent as SET.
            Report("cust-1", SEATS, 3.0, at, behavior="SET"),
            Report("cust-1", SEATS, 9.0, at + timedelta(minutes=20), behavior="SET"),
            Report("cust-1", SEATS, 6.0, at + timedelta(minutes=5), behavior="SET"),
            # The neighbouring hours' reports are theirs.
            Report("cust-0", STEPS, 100.0, hour - timedelta(milliseconds=1)),
            Report("cust-0", STEPS, 100.0, hour + timedelta(hours=1)),
            # A report on a metered feature adds to its events' count.
            Report("cust-2", CALLS, 10.0, at),
        ],
    )
    insert_events(
        ch,
        "byoc",
        env,
        [Event("cust-2", "api_call", f"{env}-e{i}", at) for i in range(3)],
    )

    result = run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file)

    assert result.success
    assert _rows(ch, env, hour) == {
        ("cust-0", "", STEPS, REPORTED_DELTA): pytest.approx(5.0 + 7.0 - 2.5),
        ("cust-0", "team-a", STEPS, REPORTED_DELTA): 4.0,
        ("cust-1", "", STEPS, REPORTED_DELTA): 1.25,
        ("cust-3", "", STEPS, REPORTED_DELTA): -1.0,
        ("cust-1", "", SEATS, REPORTED_SET): 9.0,
        ("cust-2", "", CALLS, REPORTED_DELTA): 10.0,
        ("cust-2", "", CALLS, "COUNT"): 3.0,
    }
    found = checks(result)
    assert found["rollup_reconciles_with_raw_events"].passed
    assert found["rollup_expectations"].passed  # a negative reported DELTA is no error
    assert control_plane_totals(infra.settings, env) == {
        ("cust-0", "", STEPS): pytest.approx(9.5),
        ("cust-0", "team-a", STEPS): 4.0,
        ("cust-1", "", STEPS): 1.25,
        ("cust-3", "", STEPS): -1.0,
        ("cust-1", "", SEATS): 9.0,
        ("cust-2", "", CALLS): 13.0,
    }
    published = metadata(result, "published_usage")
    assert published["levels_sent"] == 1
    assert SEATS not in published["not_published_non_additive_features"]

    # A late report of the hour: the re-run sends exactly the difference, once.
    insert_reports(
        ch, "byoc", env, [Report("cust-1", STEPS, 2.0, at, received_at=hour + timedelta(hours=3))]
    )
    stale = reconcile(ch, "byoc", hour)
    assert not stale.passed and stale.mismatches[0]["aggregation"] == REPORTED_DELTA
    records = len(control_plane_records(infra.settings, env))
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    assert control_plane_totals(infra.settings, env)[("cust-1", "", STEPS)] == pytest.approx(3.25)
    assert len(control_plane_records(infra.settings, env)) == records + 1


def test_an_hour_with_only_reports_is_rolled_up(env, ch, config_file):
    """The hour's environments come from the reports too (no raw event at all)."""
    hour = fresh_hour()
    insert_reports(ch, "byoc", env, [Report("cust-3", STEPS, 2.0, hour + timedelta(minutes=1))])
    assert not reconcile(ch, "byoc", hour).passed  # reports and no rollup yet

    result = run(ROLLUP, hour_key(hour), config_file)

    assert result.success
    assert _rows(ch, env, hour) == {("cust-3", "", STEPS, REPORTED_DELTA): 2.0}
    assert env in metadata(result, "hourly_usage_rollup")["environments"]
    assert reconcile(ch, "byoc", hour).passed


def test_reports_sent_with_the_official_sdk_are_billed(infra, tmp_path: Path):
    """REST /api/v2/usage (stigg SDK) -> usage.reports -> the stream processor -> usage_reports
    -> hourly rollup -> ReportUsageBulk to the control plane."""
    # A processor of its own (group, data dir), loading the stack's usage.reports.
    s = isolated_settings(infra.settings, tmp_path / "stack")
    s.kafka.reports_topic = infra.settings.kafka.reports_topic
    env, customer = s.environment, f"cust-{uuid.uuid4().hex[:8]}"
    with ControlPlaneClient.from_settings(s) as cp:
        for feature in FEATURES:
            cp.put_entity(env, feature)
        cp.put_entity(env, Customer(id=customer, name=customer))
    hour = fresh_hour()
    at = (hour + timedelta(minutes=15)).isoformat().replace("+00:00", "Z")
    api = start_api(infra.settings, infra.api_key, tmp_path / "api")
    supervisor = Supervisor(s, ["stream"], restart=False)
    supervisor.start()
    try:
        client = Stigg(api_key=api.api_key, base_url=api.url)
        usages = [
            {"customer_id": customer, "feature_id": STEPS, "value": 5, "created_at": at},
            {
                "customer_id": customer,
                "feature_id": STEPS,
                "value": 2.5,
                "created_at": at,
                "idempotency_key": "steps-1",
            },
            {
                "customer_id": customer,
                "feature_id": SEATS,
                "value": 4,
                "created_at": at,
                "update_behavior": "SET",
            },
        ]
        client.v2.usage.report(usages=usages)
        # The same idempotency key again, with another value: the first one stands.
        client.v2.usage.report(usages=[{**usages[1], "value": 250}])
        ch = infra.clickhouse()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            stored = ch.query(
                "SELECT count() FROM byoc.usage_reports FINAL WHERE customer_id = {c:String}",
                parameters={"c": customer},
            ).result_rows[0][0]
            if stored >= 4:
                break
            time.sleep(0.5)
        ch.close()
        assert stored == 4  # four receipts, the reused key's too
    finally:
        supervisor.stop()
        api.stop()

    result = run(ROLLUP_AND_PUBLISH, hour_key(hour), settings_file(tmp_path, s))

    assert result.success
    totals = {k: v for k, v in control_plane_totals(s, env).items() if k[0] == customer}
    assert totals == {(customer, "", STEPS): 7.5, (customer, "", SEATS): 4.0}


def test_set_levels_are_sent_in_hour_order_and_never_set_back(infra, env, ch, config_file):
    hour = fresh_hour()
    later = hour + timedelta(hours=1)
    insert_reports(
        ch,
        "byoc",
        env,
        [
            Report("cust-0", SEATS, 5.0, hour + timedelta(minutes=1), behavior="SET"),
            Report("cust-0", SEATS, 8.0, later + timedelta(minutes=1), behavior="SET"),
        ],
    )

    assert run(ROLLUP_AND_PUBLISH, hour_key(later), config_file).success
    # The older hour runs after the newer one (a retry, a backfill): its level would set the
    # control plane back to 5.
    older = run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file)

    assert older.success
    assert control_plane_totals(infra.settings, env) == {("cust-0", "", SEATS): 8.0}
    meta = metadata(older, "published_usage")
    assert (meta["levels_sent"], meta["levels_superseded_by_later_hours"]) == (0, 1)

    # A late SET of the newer hour: the re-run sends the new level, once.
    late = Report("cust-0", SEATS, 3.0, later + timedelta(minutes=30), behavior="SET")
    insert_reports(ch, "byoc", env, [late])
    records = len(control_plane_records(infra.settings, env))
    assert run(ROLLUP_AND_PUBLISH, hour_key(later), config_file).success
    assert run(ROLLUP_AND_PUBLISH, hour_key(later), config_file).success
    assert control_plane_totals(infra.settings, env) == {("cust-0", "", SEATS): 3.0}
    assert len(control_plane_records(infra.settings, env)) == records + 1


def test_a_set_then_a_delta_of_one_hour_bill_the_level_plus_the_delta(infra, env, ch, config_file):
    """SET 10 then DELTA +5 (the order the enforcement counters apply them): 15. The level is
    sent before the hour's DELTAs (levels.py), or the SET would wipe the DELTA."""
    hour = fresh_hour()
    insert_reports(
        ch,
        "byoc",
        env,
        [
            Report("cust-0", SEATS, 10.0, hour + timedelta(minutes=5), behavior="SET"),
            Report("cust-0", SEATS, 5.0, hour + timedelta(minutes=30)),
        ],
    )

    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success

    assert control_plane_totals(infra.settings, env) == {("cust-0", "", SEATS): 15.0}


def test_a_set_retried_into_the_next_hour_is_still_sent(infra, env, ch, config_file):
    """A report retried under its idempotency key just after the hour ended (no createdAt: the
    receive time) is a later receipt of the hour's report: it supersedes nothing."""
    hour = fresh_hour()
    later = hour + timedelta(hours=1)
    first = Report("cust-0", SEATS, 6.0, later - timedelta(seconds=1), behavior="SET")
    retried = Report(
        "cust-0", SEATS, 6.0, later + timedelta(seconds=1), first.report_id, behavior="SET"
    )
    insert_reports(ch, "byoc", env, [first, retried])

    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    assert run(ROLLUP_AND_PUBLISH, hour_key(later), config_file).success

    assert control_plane_totals(infra.settings, env) == {("cust-0", "", SEATS): 6.0}


def test_an_older_hour_s_level_sent_late_keeps_the_later_hour_s_deltas(infra, env, ch, config_file):
    """SET 10 in an hour, DELTA +5 in the next (the counters: 15); the older hour published
    after the newer one (a retry after a failure, a backfill): its level wiped the +5."""
    hour = fresh_hour()
    later = hour + timedelta(hours=1)
    insert_reports(
        ch,
        "byoc",
        env,
        [
            Report("cust-0", SEATS, 10.0, hour + timedelta(minutes=5), behavior="SET"),
            Report("cust-0", SEATS, 5.0, later + timedelta(minutes=5)),
        ],
    )

    assert run(ROLLUP_AND_PUBLISH, hour_key(later), config_file).success
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success

    assert control_plane_totals(infra.settings, env) == {("cust-0", "", SEATS): 15.0}
    # Published again in order, nothing changes.
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    assert run(ROLLUP_AND_PUBLISH, hour_key(later), config_file).success
    assert control_plane_totals(infra.settings, env) == {("cust-0", "", SEATS): 15.0}
