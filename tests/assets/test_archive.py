"""The cold tier against the real S3 (SeaweedFS, SSE-KMS) and KMS (moto), and restore."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection

from assets.archive.encryption import ArchiveCrypto, AwsKmsClient
from assets.archive.hours import (
    EVENT_COLUMNS,
    Manifest,
    fetch_verified,
    manifest_key,
    read_manifest,
)
from assets.partitions import day_key
from assets.quality.checks import compare_archive
from byoc_platform.clients import kms, s3
from tests.assets.conftest import checks, metadata, run
from tests.assets.usage_data import fresh_day, insert_events, make_events, settings_file
from tests.stack_fixtures import free_port

pytestmark = pytest.mark.integration

ARCHIVE = AssetSelection.assets("cold_archive")


@pytest.fixture(scope="module")
def other_kms(tmp_path_factory) -> Iterator[object]:
    """A second, real KMS that holds keys of the same aliases but not the archive's keys."""
    port = free_port()
    state = tmp_path_factory.mktemp("other-kms") / "keys.state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "byoc_platform.kms_server",
            "--state-file",
            str(state),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = boto3.client(
        "kms",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            client.list_keys()
            break
        except Exception:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.2)
    for alias in ("alias/byoc-archive", "alias/byoc-archive-pii"):
        key = client.create_key()["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName=alias, TargetKeyId=key)
    try:
        yield client
    finally:
        process.terminate()
        process.wait(10)


def _archived_day(infra, ch, env, config_file, hours=(2, 7), rows=250):
    day = fresh_day()
    events = {}
    for h in hours:
        hour = day + timedelta(hours=h)
        events[hour] = make_events(hour, rows, seed=h)
        insert_events(ch, "byoc", env, events[hour])
    result = run(ARCHIVE, day_key(day), config_file)
    assert result.success
    return day, events, result


def _restore(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`byoc archive restore ARGS` in a child process with the environment ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "byoc_platform", "archive", "restore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _crypto(kms_client, settings) -> ArchiveCrypto:
    return ArchiveCrypto(
        kms_client, settings.kms.key_alias, settings.kms.pii_key_alias, EVENT_COLUMNS
    )


def test_archive_is_encrypted_under_kms_and_unreadable_without_it(
    infra, env, ch, config_file, other_kms
):
    settings = infra.settings
    day, events, result = _archived_day(infra, ch, env, config_file)
    hour = min(events)
    client = s3(settings)
    key = read_manifest(client, settings.s3.archive_bucket, env, hour).object_key
    prefix = f"events/env={env}/date={day:%Y-%m-%d}/hour={hour:%H}/"
    assert re.fullmatch(re.escape(prefix) + r"events-[0-9a-f]{16}\.parquet", key), key

    head = client.head_object(Bucket=settings.s3.archive_bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    archive_key_id = kms(settings).describe_key(KeyId=settings.kms.key_alias)["KeyMetadata"]["Arn"]
    assert head["SSEKMSKeyId"] == archive_key_id
    body = client.get_object(Bucket=settings.s3.archive_bucket, Key=key)["Body"].read()
    manifest = Manifest.from_json(
        client.get_object(Bucket=settings.s3.archive_bucket, Key=manifest_key(env, hour))[
            "Body"
        ].read()
    )
    assert manifest.rows == len(events[hour]) and manifest.verified
    assert manifest.bytes == len(body)

    # Without KMS: no decryption properties, a KMS that is down, a KMS with other keys.
    with pytest.raises(OSError, match="encrypted"):
        pq.read_table(io.BytesIO(body))
    dead = boto3.client(
        "kms",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=boto3.session.Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(Exception):  # noqa: B017 - pyarrow wraps the KMS error
        pq.read_table(
            io.BytesIO(body), decryption_properties=_crypto(dead, settings).decryption_properties()
        )
    with pytest.raises(Exception):  # noqa: B017
        pq.read_table(
            io.BytesIO(body),
            decryption_properties=_crypto(other_kms, settings).decryption_properties(),
        )

    # With the KMS: every row, equal to what ClickHouse holds.
    table = pq.read_table(
        io.BytesIO(body),
        decryption_properties=_crypto(kms(settings), settings).decryption_properties(),
    )
    assert table.num_rows == len(events[hour])
    assert sorted(table.column("idempotency_key").to_pylist()) == sorted(
        e.idempotency_key for e in events[hour]
    )
    meta = metadata(result, "cold_archive")
    assert meta["hours_archived"] == 2 and meta["rows"] == sum(map(len, events.values()))
    assert checks(result)["archive_matches_warehouse"].passed


def test_pii_columns_need_the_pii_key(infra, env, ch, config_file):
    settings = infra.settings
    _day, events, _ = _archived_day(infra, ch, env, config_file, hours=(5,), rows=50)
    client, bucket = s3(settings), settings.s3.archive_bucket
    key = read_manifest(client, bucket, env, min(events)).object_key
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()

    class NoPiiKms(AwsKmsClient):
        """A KMS grant that covers the archive key but not the PII key."""

        def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
            if master_key_identifier == settings.kms.pii_key_alias:
                raise PermissionError("AccessDenied: kms:Decrypt on the PII key")
            return super().unwrap_key(wrapped_key, master_key_identifier)

    crypto = ArchiveCrypto(
        kms(settings),
        settings.kms.key_alias,
        settings.kms.pii_key_alias,
        EVENT_COLUMNS,
        kms_client_class=NoPiiKms,
    )
    props = crypto.decryption_properties()
    public = pq.read_table(
        io.BytesIO(body), columns=["event_name", "event_time"], decryption_properties=props
    )
    assert public.num_rows == 50
    with pytest.raises(Exception, match=r"AccessDenied"):
        pq.read_table(io.BytesIO(body), columns=["customer_id"], decryption_properties=props)


def test_archive_check_catches_rows_that_arrived_after_archiving(infra, env, ch, config_file):
    day, events, _ = _archived_day(infra, ch, env, config_file, hours=(9,), rows=40)
    hour = min(events)
    insert_events(ch, "byoc", env, make_events(hour, 3, seed=99))  # late events

    stale = compare_archive(ch, "byoc", day)
    assert not stale.passed
    assert stale.differences == [
        {"hour": f"{env} {hour:%H}:00", "clickhouse_rows": 43, "archive_rows": 40}
    ]

    again = run(ARCHIVE, day_key(day), config_file)
    assert again.success
    assert metadata(again, "cold_archive")["hours_archived"] == 1
    assert checks(again)["archive_matches_warehouse"].passed
    # Unchanged hours are not rewritten.
    third = run(ARCHIVE, day_key(day), config_file)
    assert metadata(third, "cold_archive")["hours_already_current"] == 1


def test_a_second_archive_of_an_hour_leaves_the_first_restorable(infra, env, ch, config_file):
    """Two archives of one hour (the late-events sensor and the daily schedule at once, or a
    forced re-archive killed before its manifest) used to write the same object: the first
    run's manifest, put last, then named bytes it was not verified with, and retention
    dropped an hour no restore could read (F61). Each file is now named by its content."""
    day, events, _ = _archived_day(infra, ch, env, config_file, hours=(11,), rows=30)
    hour = min(events)
    client, bucket = s3(infra.settings), infra.settings.s3.archive_bucket
    first = read_manifest(client, bucket, env, hour)

    force = {"ops": {"cold_archive": {"config": {"force": True}}}}
    assert run(ARCHIVE, day_key(day), config_file, force).success
    second = read_manifest(client, bucket, env, hour)
    assert second.object_key != first.object_key and second.sha256 != first.sha256
    # The first run's manifest landing last (the race's other order) still names its file.
    client.put_object(Bucket=bucket, Key=manifest_key(env, hour), Body=first.to_json())

    crypto = _crypto(kms(infra.settings), infra.settings)
    for manifest in (first, second, read_manifest(client, bucket, env, hour)):
        assert fetch_verified(client, bucket, manifest, crypto).num_rows == 30


def test_restore_brings_the_rows_back(infra, env, ch, config_file):
    day, events, _ = _archived_day(infra, ch, env, config_file, hours=(13, 14), rows=120)
    hour = day + timedelta(hours=13)
    count = (
        "SELECT count() FROM byoc.usage_events FINAL WHERE environment = {e:String} "
        "AND toStartOfHour(event_time) = {h:DateTime('UTC')}"
    )
    params = {"e": env, "h": hour.strftime("%Y-%m-%d %H:%M:%S")}
    before = ch.query(
        "SELECT customer_id, idempotency_key, event_time, `values` FROM byoc.usage_events FINAL "
        "WHERE environment = {e:String} AND toStartOfHour(event_time) = {h:DateTime('UTC')} "
        "ORDER BY customer_id, idempotency_key",
        parameters=params,
    ).result_rows
    ch.command(
        "DELETE FROM byoc.usage_events WHERE environment = {e:String} "
        "AND toStartOfHour(event_time) = {h:DateTime('UTC')}",
        parameters=params,
    )
    assert ch.command(count, parameters=params) == 0

    done = _restore(
        "--hour",
        hour.strftime("%Y-%m-%dT%H"),
        "--env",
        env,
        env={**os.environ, "BYOC_CONFIG_FILE": config_file},
    )

    assert done.returncode == 0, done.stderr
    assert f"restored {len(events[hour])} rows of {env}" in " ".join(done.stderr.split())
    after = ch.query(
        "SELECT customer_id, idempotency_key, event_time, `values` FROM byoc.usage_events FINAL "
        "WHERE environment = {e:String} AND toStartOfHour(event_time) = {h:DateTime('UTC')} "
        "ORDER BY customer_id, idempotency_key",
        parameters=params,
    ).result_rows
    assert after == before and len(after) == 120


@pytest.mark.timeout(150)  # botocore's defaults held the restore 5 to 7 minutes (F62)
def test_restore_with_a_kms_that_never_answers_fails_on_a_timeout(
    infra, env, ch, config_file, tmp_path
):
    """A KMS that accepts connections and never answers (a stopped process, a black-holed
    proxy): the restore ends with an error naming the KMS and the timeout."""
    _day, events, _ = _archived_day(infra, ch, env, config_file)
    # Listening, never accepting: the kernel completes the handshake, nothing is ever read.
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = infra.settings.model_copy(update={"data_dir": tmp_path})
        config = settings_file(tmp_path, settings, kms={"endpoint": endpoint})
        hour = min(events).strftime("%Y-%m-%dT%H")
        configured = {**os.environ, "BYOC_CONFIG_FILE": config}

        done = _restore("--hour", hour, "--env", env, env=configured)

    assert done.returncode == 1, done.stderr
    said = " ".join(done.stderr.split())
    assert f"KMS {endpoint}" in said and "Read timeout" in said, said
    assert "Traceback" not in said


def test_restore_of_an_hour_without_archive_fails_clearly(infra, config_file):
    configured = {**os.environ, "BYOC_CONFIG_FILE": config_file}
    done = _restore("--hour", "2025-01-02T03", env=configured)
    assert done.returncode == 1
    assert "no archive holds 2025-01-02T03:00 UTC" in done.stderr
    bad = _restore("--hour", "yesterday", env=configured)
    assert bad.returncode == 2 and "--hour" in bad.stderr
    empty = _restore("--hour", "2025-01-02T03", "--env", " ", env=configured)
    # An empty --env meant every environment: a restore far wider than asked.
    assert empty.returncode == 2 and "--env is empty" in empty.stderr


def test_restore_without_s3_says_so_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "byoc_platform", "archive", "restore", "--hour", "2025-01-02T03"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("BYOC_")},
            "BYOC_DATA_DIR": str(tmp_path),
            "BYOC_S3__ENDPOINT": f"http://127.0.0.1:{free_port()}",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "is the stack up?" in done.stderr and "Traceback" not in done.stderr


def test_restore_with_a_data_dir_uses_the_ports_of_the_stack_there(
    infra, env, ch, config_file, tmp_path
):
    """`--data-dir` names a stack: restore reads its settings.yaml (what its supervisor gave
    the components), as `status` and `rollup backfill` do, not the shell's defaults."""
    day, events, _ = _archived_day(infra, ch, env, config_file, hours=(9,), rows=40)
    hour = day + timedelta(hours=9)
    params = {"e": env, "h": hour.strftime("%Y-%m-%d %H:%M:%S")}
    ch.command(
        "DELETE FROM byoc.usage_events WHERE environment = {e:String} "
        "AND toStartOfHour(event_time) = {h:DateTime('UTC')}",
        parameters=params,
    )
    data_dir = tmp_path / "stack"
    data_dir.mkdir()
    Path(settings_file(tmp_path, infra.settings)).rename(data_dir / "settings.yaml")
    shell = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}

    label = hour.strftime("%Y-%m-%dT%H")
    done = _restore("--hour", label, "--env", env, "--data-dir", str(data_dir), env=shell)

    assert done.returncode == 0, done.stderr
    assert f"restored {len(events[hour])} rows of {env}" in " ".join(done.stderr.split())
    count = ch.command(
        "SELECT count() FROM byoc.usage_events FINAL WHERE environment = {e:String} "
        "AND toStartOfHour(event_time) = {h:DateTime('UTC')}",
        parameters=params,
    )
    assert count == 40
