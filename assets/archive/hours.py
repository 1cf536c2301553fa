"""Archiving one (environment, hour) of raw events, verifying it, and reading it back.

Layout: ``s3://<bucket>/events/env=<environment>/date=<YYYY-MM-DD>/hour=<HH>/events-<sha>.parquet``
(``<sha>``: the first 16 hex digits of the file's sha256) with ``manifest.json`` next to it,
naming the file. A write never replaces a verified file: the manifest is put only after its
own file is verified, so whichever manifest is in the bucket names intact bytes (archives
written before kept the fixed name ``events.parquet``; their manifests name it). Both are
stored with SSE-KMS under the archive key; the Parquet file is also encrypted inside (modular
encryption, see encryption.py), so it stays unreadable even to whoever can read the bucket but
not use the KMS keys.

A content fingerprint that ClickHouse and pyarrow both compute exactly (row count, sum of
event times in ms, total bytes of the idempotency keys) ties the archive to the hot data:
the export is checked against ClickHouse before upload, the read-back against the export,
and retention compares the manifest against ClickHouse again before dropping anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from assets.archive.encryption import ArchiveCrypto
from assets.partitions import ch_time
from assets.rollups.compute import FINAL_SETTINGS
from byoc_platform.warehouse_schema import USAGE_EVENTS_COLUMNS

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

EVENT_COLUMNS = list(USAGE_EVENTS_COLUMNS)  # the archive's columns are the table's, in order
PREFIX = "events/"


class ArchiveError(Exception):
    """An archive could not be written, verified or read back."""


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    sum_event_time_ms: int
    sum_key_bytes: int


@dataclass
class Manifest:
    environment: str
    hour: str  # ISO, UTC
    object_key: str
    rows: int
    bytes: int
    sha256: str
    sum_event_time_ms: int
    sum_key_bytes: int
    compression: str
    encryption: dict[str, Any]
    sse: dict[str, str]
    written_at: str
    verified: bool = False

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.rows, self.sum_event_time_ms, self.sum_key_bytes)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        return cls(**json.loads(data))


def hour_prefix(environment: str, hour: datetime) -> str:
    return f"{PREFIX}env={environment}/date={hour:%Y-%m-%d}/hour={hour:%H}/"


def object_key(environment: str, hour: datetime, sha256: str) -> str:
    """Named by its content: two archives of one hour (two runs at once, a force re-archive
    killed half-way) never overwrite each other's verified file."""
    return hour_prefix(environment, hour) + f"events-{sha256[:16]}.parquet"


def manifest_key(environment: str, hour: datetime) -> str:
    return hour_prefix(environment, hour) + "manifest.json"


# --- ClickHouse side -------------------------------------------------------------------------


def hot_fingerprints(
    client: Client, db: str, start: datetime, end: datetime, environment: str | None = None
) -> dict[tuple[str, datetime], Fingerprint]:
    """Fingerprint of every (environment, hour) with raw events in [start, end)."""
    env_filter = " AND environment = {env:String}" if environment else ""
    rows = client.query(
        f"SELECT environment, toStartOfHour(event_time) AS h, count(), "
        f"sum(toUnixTimestamp64Milli(event_time)), sum(length(idempotency_key)) "
        f"FROM {db}.usage_events FINAL "
        "WHERE event_time >= {start:DateTime('UTC')} AND event_time < {end:DateTime('UTC')}"
        f"{env_filter} GROUP BY environment, h ORDER BY environment, h",
        parameters={"start": ch_time(start), "end": ch_time(end), "env": environment or ""},
        settings=FINAL_SETTINGS,
    ).result_rows
    return {
        (env, h.replace(tzinfo=UTC)): Fingerprint(int(n), int(t), int(k))
        for env, h, n, t, k in rows
    }


def export_hour(client: Client, db: str, environment: str, hour: datetime) -> pa.Table:
    """The hour's deduplicated raw events, in a stable order (customer, idempotency key)."""
    return client.query_arrow(
        f"SELECT {', '.join(f'`{c}`' for c in EVENT_COLUMNS)} FROM {db}.usage_events FINAL "
        "WHERE environment = {env:String} AND event_time >= {start:DateTime('UTC')} "
        "AND event_time < {end:DateTime('UTC')} ORDER BY customer_id, idempotency_key",
        parameters={
            "env": environment,
            "start": ch_time(hour),
            "end": ch_time(hour + timedelta(hours=1)),
        },
        # Compressed Arrow buffers: a third of the bytes through the HTTP interface.
        settings={**FINAL_SETTINGS, "output_format_arrow_compression_method": "lz4_frame"},
        use_strings=True,
    )


def fingerprint(table: pa.Table) -> Fingerprint:
    if table.num_rows == 0:
        return Fingerprint(0, 0, 0)
    times = pc.sum(table.column("event_time").cast(pa.timestamp("ms")).cast(pa.int64())).as_py()
    key_bytes = pc.sum(pc.binary_length(table.column("idempotency_key"))).as_py()
    return Fingerprint(table.num_rows, int(times or 0), int(key_bytes or 0))


# --- files ------------------------------------------------------------------------------------


def encode_parquet(table: pa.Table, crypto: ArchiveCrypto) -> bytes:
    out = io.BytesIO()
    pq.write_table(
        table,
        out,
        compression="zstd",
        encryption_properties=crypto.encryption_properties(),
        row_group_size=1_000_000,
    )
    return out.getvalue()


def decode_parquet(body: bytes, crypto: ArchiveCrypto) -> pa.Table:
    # ParquetFile, not read_table: the latter goes through pyarrow.dataset, which imports
    # pandas (seconds, once per process) for nothing here.
    reader = pq.ParquetFile(io.BytesIO(body), decryption_properties=crypto.decryption_properties())
    return reader.read()


def iter_parquet_batches(
    body: bytes, crypto: ArchiveCrypto, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    reader = pq.ParquetFile(io.BytesIO(body), decryption_properties=crypto.decryption_properties())
    yield from reader.iter_batches(batch_size=batch_rows)


# --- object storage ---------------------------------------------------------------------------


def _put(s3: Any, bucket: str, key: str, body: bytes, kms_key: str, content_type: str) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType=content_type,
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=kms_key,
    )


def read_manifest(s3: Any, bucket: str, environment: str, hour: datetime) -> Manifest | None:
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=manifest_key(environment, hour))["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return Manifest.from_json(body)


def fetch_verified(s3: Any, bucket: str, manifest: Manifest, crypto: ArchiveCrypto) -> pa.Table:
    """Download, check the checksum, decrypt, check the fingerprint: the archived table."""
    body = s3.get_object(Bucket=bucket, Key=manifest.object_key)["Body"].read()
    digest = hashlib.sha256(body).hexdigest()
    if digest != manifest.sha256:
        raise ArchiveError(
            f"{manifest.object_key}: sha256 {digest} differs from the manifest's {manifest.sha256}"
        )
    table = decode_parquet(body, crypto)
    if fingerprint(table) != manifest.fingerprint:
        raise ArchiveError(
            f"{manifest.object_key}: content {fingerprint(table)} differs from the manifest's "
            f"{manifest.fingerprint}"
        )
    return table


def archive_hour(
    client: Client,
    db: str,
    s3: Any,
    bucket: str,
    crypto: ArchiveCrypto,
    sse_key: str,
    environment: str,
    hour: datetime,
    expected: Fingerprint,
) -> Manifest:
    """Export, encrypt, upload, read back and verify one (environment, hour)."""
    table = export_hour(client, db, environment, hour)
    got = fingerprint(table)
    if got != expected:  # events arrived (or vanished) between listing and export
        raise ArchiveError(
            f"export of {environment} {hour:%Y-%m-%dT%H} changed while archiving: "
            f"{got} vs {expected}; run the archive again"
        )
    body = encode_parquet(table, crypto)
    sha256 = hashlib.sha256(body).hexdigest()
    key = object_key(environment, hour, sha256)
    manifest = Manifest(
        environment=environment,
        hour=hour.isoformat(),
        object_key=key,
        rows=got.rows,
        bytes=len(body),
        sha256=sha256,
        sum_event_time_ms=got.sum_event_time_ms,
        sum_key_bytes=got.sum_key_bytes,
        compression="zstd",
        encryption=crypto.describe(),
        sse={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": sse_key},
        written_at=datetime.now(UTC).isoformat(),
    )
    _put(s3, bucket, key, body, sse_key, "application/vnd.apache.parquet")
    # Verification by reading back what the store now holds, not what we meant to write.
    head = s3.head_object(Bucket=bucket, Key=key)
    if head.get("ServerSideEncryption") != "aws:kms":
        raise ArchiveError(f"{key}: stored without SSE-KMS ({head.get('ServerSideEncryption')})")
    readback = fetch_verified(s3, bucket, manifest, crypto)
    if not readback.equals(table):
        raise ArchiveError(f"{key}: the read-back rows differ from the exported rows")
    manifest.verified = True
    _put(
        s3, bucket, manifest_key(environment, hour), manifest.to_json(), sse_key, "application/json"
    )
    record_manifest(client, db, manifest, "verified")
    return manifest


def record_manifest(client: Client, db: str, manifest: Manifest, status: str) -> None:
    client.insert(
        f"{db}.archive_manifests",
        [
            [
                manifest.environment,
                datetime.fromisoformat(manifest.hour),
                manifest.object_key,
                manifest.rows,
                manifest.bytes,
                manifest.sha256,
                manifest.sum_event_time_ms,
                manifest.sum_key_bytes,
                status,
                datetime.now(UTC),
            ]
        ],
        column_names=[
            "environment",
            "hour",
            "object_key",
            "rows",
            "bytes",
            "sha256",
            "sum_event_time_ms",
            "sum_key_bytes",
            "status",
            "written_at",
        ],
    )


@dataclass(frozen=True)
class RecordedManifest:
    object_key: str
    fingerprint: Fingerprint
    status: str
    sha256: str


def recorded_manifests(
    client: Client, db: str, start: datetime, end: datetime
) -> dict[tuple[str, datetime], RecordedManifest]:
    rows = client.query(
        f"SELECT environment, hour, object_key, rows, sum_event_time_ms, sum_key_bytes, status, "
        f"sha256 FROM {db}.archive_manifests FINAL "
        "WHERE hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')}",
        parameters={"start": ch_time(start), "end": ch_time(end)},
    ).result_rows
    return {
        (env, h.replace(tzinfo=UTC)): RecordedManifest(
            key, Fingerprint(int(n), int(t), int(k)), status, sha
        )
        for env, h, key, n, t, k, status, sha in rows
    }


def retired_hours(client: Client, db: str, start: datetime, end: datetime) -> list[str]:
    """:func:`retired_among` the (environment, hour)s in [start, end), reading the warehouse's
    raw events only when one of them has an archive."""
    recorded = recorded_manifests(client, db, start, end)
    if not recorded:  # the usual case (a rollup before the day's archive): no FINAL scan
        return []
    return retired_among(hot_fingerprints(client, db, start, end), recorded)


def retired_among(
    hot: dict[tuple[str, datetime], Fingerprint],
    recorded: dict[tuple[str, datetime], RecordedManifest],
) -> list[str]:
    """The (environment, hour)s whose archive holds more raw events than the warehouse does
    now: retention retired their raw events to the cold tier, and the warehouse has at most
    events that arrived late since. Rolling such an hour up, or archiving it again, from the
    warehouse would replace the hour by a part of it (its published usage cancelled, its
    archive overwritten). An expired archive counts too: its events are gone, and what was
    published from them stands."""
    retired = []
    for (env, hour), known in sorted(recorded.items()):
        have = hot.get((env, hour))
        rows = 0 if have is None else have.rows
        if rows < known.fingerprint.rows:
            retired.append(
                f"{env} {hour:%Y-%m-%dT%H} (warehouse {rows} raw events, "
                f"{known.status} archive {known.fingerprint.rows})"
            )
    return retired


def retired_problem(retired: list[str], action: str) -> str:
    """Why ``action`` is refused for ``retired`` hours, and what to do."""
    shown = "; ".join(retired[:5]) + (f"; and {len(retired) - 5} more" if len(retired) > 5 else "")
    return (
        f"refusing to {action}: the raw events of {shown} were retired to the cold tier. "
        "Restore them first (`byoc archive restore --hour <hour>`), then run this again; "
        "an hour whose archive expired cannot be rolled up again"
    )


def archived_environments(s3: Any, bucket: str, hour: datetime) -> list[str]:
    """Environments with an archive object for ``hour`` (listing the bucket, not ClickHouse)."""
    envs = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{PREFIX}env=", Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            env = common["Prefix"][len(PREFIX) + 4 : -1]
            found = s3.list_objects_v2(Bucket=bucket, Prefix=hour_prefix(env, hour), MaxKeys=1)
            if found.get("KeyCount", 0):
                envs.append(env)
    return envs
