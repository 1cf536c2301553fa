"""Retention: hot partitions go only once archived; old archives expire; all recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from dagster import AssetSelection

from assets.archive.hours import manifest_key, read_manifest
from assets.partitions import day_key, hour_key
from assets.quality.checks import compare_archive
from assets.retention.policy import hot_days
from assets.rollups.compute import latest_revision, read_rollup
from byoc_platform.clients import s3
from tests.assets.conftest import metadata, run
from tests.assets.usage_data import (
    expected_rollup,
    fresh_day,
    insert_events,
    make_events,
    minute_rows_from_events,
    settings_file,
)

pytestmark = pytest.mark.integration

RETENTION = AssetSelection.assets("retention")
ARCHIVE = AssetSelection.assets("cold_archive")
ROLLUP = AssetSelection.assets("hourly_usage_rollup")


def rows_of(ch, env, day) -> dict[str, int]:
    params = {"e": env, "d": day.date()}
    return {
        table: ch.command(
            f"SELECT count() FROM byoc.{table} WHERE environment = {{e:String}} "
            f"AND toDate({column}) = {{d:Date}}",
            parameters=params,
        )
        for table, column in (("usage_events", "event_time"), ("usage_minute", "minute"))
    }


def test_retention_drops_only_verified_archived_days(infra, env, ch, tmp_path):
    # Days early in 2025 that no other test of the session uses, and a policy evaluated
    # as of a moment that makes exactly them (and older days) older than hot_days.
    archived, unarchived, stale = (fresh_day(1, 15) for _ in range(3))
    now = max(archived, unarchived, stale) + timedelta(days=31)
    policy = settings_file(
        tmp_path, infra.settings, retention={"hot_days": 30, "archive_days": 3650}
    )
    for day in (archived, unarchived, stale):
        for h in (1, 22):
            insert_events(ch, "byoc", env, make_events(day + timedelta(hours=h), 30, seed=h))
        minute_rows_from_events(ch, "byoc", env, day, day + timedelta(days=1))
    assert run(ARCHIVE, day_key(archived), policy).success
    assert run(ARCHIVE, day_key(stale), policy).success
    # A late event after the archive: the archive no longer holds everything.
    insert_events(ch, "byoc", env, make_events(stale + timedelta(hours=1), 1, seed=77))

    result = run(
        RETENTION, None, policy, {"ops": {"retention": {"config": {"now": now.isoformat()}}}}
    )

    assert result.success
    assert rows_of(ch, env, archived) == {"usage_events": 0, "usage_minute": 0}
    kept = rows_of(ch, env, unarchived)
    assert kept["usage_events"] == 60 and kept["usage_minute"] > 0
    assert rows_of(ch, env, stale)["usage_events"] == 61
    assert archived.date() not in hot_days(ch, "byoc", "usage_events")
    meta = metadata(result, "retention")
    dropped = {d["day"]: d for d in meta["dropped_days"]}
    refused = {d["day"]: d["reason"] for d in meta["refused_days"]}
    assert str(archived.date()) in dropped
    assert "no verified archive" in refused[str(unarchived.date())]
    assert "differs from ClickHouse" in refused[str(stale.date())]
    logged = ch.query(
        "SELECT action, day FROM byoc.retention_log WHERE day IN {d:Array(Date)}",
        parameters={"d": [archived.date(), unarchived.date()]},
    ).result_rows
    assert ("drop_partition", archived.date()) in logged
    assert ("refuse_drop", unarchived.date()) in logged
    # The archive of the dropped day is still there, and its check accepts the retired hours.
    client = s3(infra.settings)
    bucket = infra.settings.s3.archive_bucket
    client.head_object(
        Bucket=bucket,
        Key=read_manifest(client, bucket, env, archived + timedelta(hours=1)).object_key,
    )
    comparison = compare_archive(ch, "byoc", archived)
    assert comparison.retired and comparison.passed and comparison.archive_rows >= 60


def test_retention_expires_archives_older_than_the_archive_policy(infra, env, ch, tmp_path):
    day = fresh_day(1, 15)
    insert_events(ch, "byoc", env, make_events(day + timedelta(hours=4), 20, seed=4))
    policy = settings_file(tmp_path, infra.settings, retention={"hot_days": 59, "archive_days": 60})
    assert run(ARCHIVE, day_key(day), policy).success
    client = s3(infra.settings)
    bucket = infra.settings.s3.archive_bucket
    key = read_manifest(client, bucket, env, day + timedelta(hours=4)).object_key
    client.head_object(Bucket=bucket, Key=key)

    # Evaluated 59 days later: kept. 61 days later: expired.
    kept = run(
        RETENTION,
        None,
        policy,
        {
            "ops": {
                "retention": {"config": {"now": (day + timedelta(days=59, hours=12)).isoformat()}}
            }
        },
    )
    assert kept.success and client.list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] == 1
    expired = run(
        RETENTION,
        None,
        policy,
        {"ops": {"retention": {"config": {"now": (day + timedelta(days=61)).isoformat()}}}},
    )

    assert expired.success
    prefix = f"events/env={env}/date={day:%Y-%m-%d}/"
    assert client.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] == 0
    meta = metadata(expired, "retention")
    assert f"{env}/{day:%Y-%m-%d}" in meta["expired_archive_days"]
    assert meta["expired_objects"] >= 2  # the Parquet file and its manifest
    status = ch.command(
        "SELECT status FROM byoc.archive_manifests FINAL WHERE environment = {e:String}",
        parameters={"e": env},
    )
    assert status == "expired"


def test_retention_keeps_a_day_whose_archive_a_restore_could_not_read(infra, env, ch, tmp_path):
    """ClickHouse's record of a verified archive is not enough: a restore reads the bucket's
    manifest and the file it names. A day whose file was overwritten, or whose manifest was
    deleted, used to be dropped all the same, its hours then lost (F61)."""
    overwritten, unlisted = fresh_day(1, 15), fresh_day(1, 15)
    for day in (overwritten, unlisted):
        insert_events(ch, "byoc", env, make_events(day + timedelta(hours=6), 20, seed=6))
        minute_rows_from_events(ch, "byoc", env, day, day + timedelta(days=1))
    policy = settings_file(
        tmp_path, infra.settings, retention={"hot_days": 30, "archive_days": 3650}
    )
    client = s3(infra.settings)
    bucket = infra.settings.s3.archive_bucket
    for day in (overwritten, unlisted):
        assert run(ARCHIVE, day_key(day), policy).success
    hour = overwritten + timedelta(hours=6)
    key = read_manifest(client, bucket, env, hour).object_key
    client.put_object(Bucket=bucket, Key=key, Body=b"not the archive")
    client.delete_object(Bucket=bucket, Key=manifest_key(env, unlisted + timedelta(hours=6)))
    now = max(overwritten, unlisted) + timedelta(days=31)
    at = {"ops": {"retention": {"config": {"now": now.isoformat()}}}}

    result = run(RETENTION, None, policy, at)

    assert result.success
    for day in (overwritten, unlisted):
        assert rows_of(ch, env, day)["usage_events"] == 20
    refused = {d["day"]: d["reason"] for d in metadata(result, "retention")["refused_days"]}
    assert "holds 15 bytes, its manifest" in refused[str(overwritten.date())]
    assert "manifest.json is missing" in refused[str(unlisted.date())]
    for day in (overwritten, unlisted):
        assert "config force: true" in refused[str(day.date())]

    # The fix the refusal names: the day archived again (forced), then dropped.
    force = {"ops": {"cold_archive": {"config": {"force": True}}}}
    assert run(ARCHIVE, day_key(overwritten), policy, force).success
    again = run(RETENTION, None, policy, at)
    dropped = {d["day"] for d in metadata(again, "retention")["dropped_days"]}
    assert str(overwritten.date()) in dropped and str(unlisted.date()) not in dropped
    assert rows_of(ch, env, overwritten)["usage_events"] == 0


def _rollup_of(ch, env, hour) -> dict:
    return {r.key: r.value for r in read_rollup(ch, "byoc", hour) if r.environment == env}


def _failure(result) -> str:
    return " ".join(str(e.event_specific_data) for e in result.all_events if e.is_step_failure)


def test_a_retired_hour_is_not_rolled_up_or_archived_again_until_restored(infra, env, ch, tmp_path):
    """After retention, the warehouse holds at most late events of an hour: a re-rollup from
    it used to replace the hour's usage by theirs (its published billing cancelled), and a
    re-archive (the late-events sensor asks for both) overwrote the archive with them."""
    day = fresh_day(1, 15)
    hour = day + timedelta(hours=5)
    events = make_events(hour, 30, seed=5)
    insert_events(ch, "byoc", env, events)
    minute_rows_from_events(ch, "byoc", env, day, day + timedelta(days=1))
    policy = settings_file(
        tmp_path, infra.settings, retention={"hot_days": 30, "archive_days": 3650}
    )
    assert run(ROLLUP, hour_key(hour), policy).success
    assert run(ARCHIVE, day_key(day), policy).success
    now = {"ops": {"retention": {"config": {"now": (day + timedelta(days=31)).isoformat()}}}}
    assert run(RETENTION, None, policy, now).success
    assert rows_of(ch, env, day)["usage_events"] == 0
    rolled = latest_revision(ch, "byoc", hour)
    assert _rollup_of(ch, env, hour) == pytest.approx(expected_rollup(env, events))
    late = make_events(hour, 1, seed=99)
    insert_events(ch, "byoc", env, late)  # after retention

    again = run(ROLLUP, hour_key(hour), policy)
    rearchive = run(ARCHIVE, day_key(day), policy)

    assert not again.success and not rearchive.success
    for result in (again, rearchive):
        reason = _failure(result)
        assert "retired to the cold tier" in reason, reason
        assert f"{env} {hour:%Y-%m-%dT%H} (warehouse 1 raw events, verified archive 30)" in reason
        assert "byoc archive restore" in reason
    assert latest_revision(ch, "byoc", hour) == rolled
    bucket = infra.settings.s3.archive_bucket
    assert read_manifest(s3(infra.settings), bucket, env, hour).rows == 30

    # Restored, the hour holds its 30 events and the late one: both run, over all of them.
    command = ["archive", "restore", "--hour", f"{hour:%Y-%m-%dT%H}", "--env", env]
    restored = subprocess.run(
        [sys.executable, "-m", "byoc_platform", *command],
        env={**os.environ, "BYOC_CONFIG_FILE": policy},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert restored.returncode == 0, restored.stderr
    assert run(ROLLUP, hour_key(hour), policy).success
    assert _rollup_of(ch, env, hour) == pytest.approx(expected_rollup(env, events + late))
    assert run(ARCHIVE, day_key(day), policy).success
    assert read_manifest(s3(infra.settings), bucket, env, hour).rows == 31


def test_the_policy_time_is_read_in_utc_whatever_its_offset(infra, env, ch, tmp_path):
    """2 a.m. at +05:00 on the 31st day after ``day`` is 21:00 UTC of the 30th: ``day`` is
    not yet older than 30 days (the offset's calendar made it so and dropped it)."""
    day = fresh_day(1, 15)
    insert_events(ch, "byoc", env, make_events(day + timedelta(hours=3), 10, seed=3))
    minute_rows_from_events(ch, "byoc", env, day, day + timedelta(days=1))
    policy = settings_file(
        tmp_path, infra.settings, retention={"hot_days": 30, "archive_days": 3650}
    )
    assert run(ARCHIVE, day_key(day), policy).success
    at = (day + timedelta(days=31, hours=2)).replace(tzinfo=None).isoformat() + "+05:00"

    result = run(RETENTION, None, policy, {"ops": {"retention": {"config": {"now": at}}}})

    assert result.success
    assert rows_of(ch, env, day)["usage_events"] == 10
    assert metadata(result, "retention")["evaluated_at"].endswith("+00:00")
