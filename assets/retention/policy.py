"""Retention decisions and deletions (invariant 7: hot data goes only after a verified archive).

Hot tier: ``usage_events`` and ``usage_minute`` are partitioned by day. A day older than
``settings.retention.hot_days`` is dropped only when EVERY (environment, hour) that ClickHouse
holds for it has a verified archive whose content fingerprint equals ClickHouse's right now,
and the bucket's ``manifest.json`` (what a restore reads) still names that verified object,
which is there with the manifest's size; otherwise the day is kept and the refusal logged.
``usage_minute`` (derived from the raw events) follows its day of ``usage_events``.

Cold tier: archive objects of days older than ``settings.retention.archive_days`` are deleted
(files and manifests), and their manifests marked expired.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from assets.archive.hours import (
    PREFIX,
    Fingerprint,
    RecordedManifest,
    hot_fingerprints,
    read_manifest,
    recorded_manifests,
)
from assets.partitions import ch_time

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

HOT_TABLES = ("usage_events", "usage_minute")


@dataclass
class DayDecision:
    day: date
    drop: bool
    reason: str
    hours: int = 0
    rows: int = 0
    tables: list[str] = field(default_factory=list)


@dataclass
class RetentionReport:
    dropped: list[DayDecision] = field(default_factory=list)
    refused: list[DayDecision] = field(default_factory=list)
    expired_objects: list[str] = field(default_factory=list)
    expired_days: list[str] = field(default_factory=list)


def hot_days(client: Client, db: str, table: str) -> list[date]:
    rows = client.query(
        "SELECT DISTINCT partition FROM system.parts "
        "WHERE database = {db:String} AND table = {t:String} AND active ORDER BY partition",
        parameters={"db": db, "t": table},
    ).result_rows
    return [datetime.strptime(p, "%Y%m%d").date() for (p,) in rows]


def _object_size(s3: Any, bucket: str, key: str) -> int | None:
    """The object's size in bytes, None if it is not there."""
    from botocore.exceptions import ClientError

    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def restorable_problem(
    s3: Any, bucket: str, env: str, hour: datetime, known: RecordedManifest
) -> str | None:
    """Why a restore of the hour would not read the archive ``known`` records, or None.

    A restore follows the bucket's manifest, not ClickHouse's record of it: the manifest
    must be verified and name the recorded file, which must be there with its size.
    """
    try:
        stored = read_manifest(s3, bucket, env, hour)
    except (ValueError, TypeError) as exc:  # not JSON, or not a manifest's fields
        return f"its manifest.json is unreadable ({exc})"
    if stored is None:
        return f"{known.object_key}: its manifest.json is missing"
    if not stored.verified:
        return f"its manifest.json names {stored.object_key}, never verified"
    if stored.object_key != known.object_key or stored.sha256 != known.sha256:
        return (
            f"its manifest.json names {stored.object_key} (sha256 {stored.sha256[:16]}), "
            f"not the verified archive {known.object_key} (sha256 {known.sha256[:16]})"
        )
    size = _object_size(s3, bucket, known.object_key)
    if size is None:
        return f"{known.object_key} is missing"
    if size != stored.bytes:
        return f"{known.object_key} holds {size} bytes, its manifest {stored.bytes}"
    return None


def minute_hours(
    client: Client, db: str, start: datetime, end: datetime
) -> set[tuple[str, datetime]]:
    rows = client.query(
        f"SELECT DISTINCT environment, toStartOfHour(minute) FROM {db}.usage_minute "
        "WHERE minute >= {start:DateTime('UTC')} AND minute < {end:DateTime('UTC')}",
        parameters={"start": ch_time(start), "end": ch_time(end)},
    ).result_rows
    return {(env, h.replace(tzinfo=UTC)) for env, h in rows}


def decide(client: Client, db: str, s3: Any, bucket: str, day: date) -> DayDecision:
    """May the hot partitions of ``day`` be dropped? Only with a current, verified archive."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    hot = hot_fingerprints(client, db, start, end)
    recorded = recorded_manifests(client, db, start, end)
    # Hours the stream aggregated must be archived too (their raw rows may already be gone).
    needed: dict[tuple[str, datetime], Fingerprint | None] = dict.fromkeys(
        minute_hours(client, db, start, end)
    )
    needed.update(hot)
    rows = sum(fp.rows for fp in hot.values())
    for (env, hour), fp in sorted(needed.items()):
        known = recorded.get((env, hour))
        label = f"{env} {hour:%Y-%m-%dT%H}"
        if known is None or known.status != "verified":
            return DayDecision(day, False, f"{label} has no verified archive", len(needed), rows)
        if fp is not None and known.fingerprint != fp:
            return DayDecision(
                day,
                False,
                f"{label}: archive {known.fingerprint} differs from ClickHouse {fp} "
                "(late events since?); re-run the archive",
                len(needed),
                rows,
            )
        problem = restorable_problem(s3, bucket, env, hour, known)
        if problem:
            # The day is kept: archiving it again writes a verified file and its manifest.
            fix = f"re-archive the day (cold_archive, partition {day:%Y-%m-%d}, config force: true)"
            return DayDecision(day, False, f"{label}: {problem}; {fix}", len(needed), rows)
    return DayDecision(day, True, "every hour archived and verified", len(needed), rows)


def drop_day(client: Client, db: str, day: date) -> list[str]:
    partition = day.strftime("%Y%m%d")
    dropped = []
    for table in HOT_TABLES:
        if day in hot_days(client, db, table):
            client.command(f"ALTER TABLE {db}.{table} DROP PARTITION {partition}")
            dropped.append(table)
    return dropped


def log_action(client: Client, db: str, action: str, target: str, day: date, detail: Any) -> None:
    client.insert(
        f"{db}.retention_log",
        [[datetime.now(UTC), action, target, day, json.dumps(detail, default=str)]],
        column_names=["at", "action", "target", "day", "detail"],
    )


def apply_hot_retention(
    client: Client, db: str, s3: Any, bucket: str, cutoff: date, report: RetentionReport
) -> None:
    """Drop every archived day before ``cutoff``; refuse (and log) the others."""
    days = sorted({d for t in HOT_TABLES for d in hot_days(client, db, t) if d < cutoff})
    for day in days:
        decision = decide(client, db, s3, bucket, day)
        if decision.drop:
            decision.tables = drop_day(client, db, day)
            log_action(
                client,
                db,
                "drop_partition",
                ",".join(decision.tables),
                day,
                {"hours": decision.hours, "rows": decision.rows},
            )
            report.dropped.append(decision)
            log.info("dropped hot partitions of %s (%d rows)", day, decision.rows)
        else:
            log_action(client, db, "refuse_drop", "usage_events", day, {"reason": decision.reason})
            report.refused.append(decision)
            log.warning("kept hot partitions of %s: %s", day, decision.reason)


def archive_days(s3: Any, bucket: str) -> dict[str, list[str]]:
    """Date prefixes per environment prefix: {"events/env=X/": ["2025-01-01", ...]}."""
    out: dict[str, list[str]] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{PREFIX}env=", Delimiter="/"):
        for env_prefix in (c["Prefix"] for c in page.get("CommonPrefixes", [])):
            dates = []
            for sub in paginator.paginate(
                Bucket=bucket, Prefix=env_prefix + "date=", Delimiter="/"
            ):
                dates += [
                    c["Prefix"][len(env_prefix) + 5 : -1] for c in sub.get("CommonPrefixes", [])
                ]
            out[env_prefix] = dates
    return out


def apply_archive_expiry(
    client: Client, db: str, s3: Any, bucket: str, cutoff: date, report: RetentionReport
) -> None:
    """Delete archive objects of days before ``cutoff`` and mark their manifests expired."""
    paginator = s3.get_paginator("list_objects_v2")
    for env_prefix, dates in archive_days(s3, bucket).items():
        env = env_prefix[len(PREFIX) + 4 : -1]
        for text in dates:
            try:
                day = date.fromisoformat(text)
            except ValueError:
                continue  # not ours
            if day >= cutoff:
                continue
            keys = [
                obj["Key"]
                for page in paginator.paginate(Bucket=bucket, Prefix=f"{env_prefix}date={text}/")
                for obj in page.get("Contents", [])
            ]
            for i in range(0, len(keys), 1000):
                s3.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
                )
            _expire_manifests(client, db, env, day)
            log_action(
                client,
                db,
                "expire_archive",
                f"{env_prefix}date={text}/",
                day,
                {"objects": len(keys)},
            )
            report.expired_objects += keys
            report.expired_days.append(f"{env}/{text}")


def _expire_manifests(client: Client, db: str, env: str, day: date) -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    client.command(
        f"INSERT INTO {db}.archive_manifests (environment, hour, object_key, rows, bytes, sha256, "
        "sum_event_time_ms, sum_key_bytes, status, written_at) "
        "SELECT environment, hour, object_key, rows, bytes, sha256, sum_event_time_ms, "
        f"sum_key_bytes, 'expired', now64(6) FROM {db}.archive_manifests FINAL "
        "WHERE environment = {env:String} AND hour >= {start:DateTime('UTC')} "
        "AND hour < {end:DateTime('UTC')}",
        parameters={"env": env, "start": ch_time(start), "end": ch_time(start + timedelta(days=1))},
    )
