"""Reading an archived hour back into ClickHouse (for re-rollup of old periods).

The archive, not ClickHouse, says what exists: the bucket is listed for the hour, each
manifest is read, each file downloaded, its checksum and content fingerprint verified, then
decrypted (through KMS) and inserted into ``usage_events`` in batches. Restoring twice is
harmless: ``usage_events`` is keyed by the dedup key and read with FINAL.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from assets.archive.encryption import ArchiveCrypto
from assets.archive.hours import (
    ArchiveError,
    Manifest,
    archived_environments,
    fingerprint,
    hot_fingerprints,
    iter_parquet_batches,
    read_manifest,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)


@dataclass
class RestoredHour:
    environment: str
    hour: datetime
    rows: int
    object_key: str
    rows_in_warehouse: int


@dataclass
class RestorePlan:
    hour: datetime
    manifests: list[Manifest] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.manifests)


def plan_restore(s3: Any, bucket: str, hour: datetime, environment: str | None) -> RestorePlan:
    envs = [environment] if environment else archived_environments(s3, bucket, hour)
    plan = RestorePlan(hour)
    for env in envs:
        manifest = read_manifest(s3, bucket, env, hour)
        if manifest is None:
            if environment:
                raise ArchiveError(f"no archive of environment {env!r} for {hour:%Y-%m-%dT%H}")
            continue
        if not manifest.verified:
            raise ArchiveError(f"{manifest.object_key} was never verified; refusing to restore")
        plan.manifests.append(manifest)
    return plan


def restore_manifest(
    client: Client,
    db: str,
    s3: Any,
    bucket: str,
    crypto: ArchiveCrypto,
    manifest: Manifest,
    on_rows: Callable[[int], None] = lambda n: None,
    batch_rows: int = 200_000,
) -> RestoredHour:
    body = s3.get_object(Bucket=bucket, Key=manifest.object_key)["Body"].read()
    if hashlib.sha256(body).hexdigest() != manifest.sha256:
        raise ArchiveError(f"{manifest.object_key}: checksum differs from its manifest")
    # Verify the whole file before inserting anything: a bad archive restores nothing.
    batches = list(iter_parquet_batches(body, crypto, batch_rows))
    if fingerprint(pa.Table.from_batches(batches)) != manifest.fingerprint:
        raise ArchiveError(f"{manifest.object_key}: content differs from its manifest")
    inserted = 0
    for batch in batches:
        client.insert_arrow("usage_events", pa.Table.from_batches([batch]), database=db)
        inserted += batch.num_rows
        on_rows(batch.num_rows)
    hour = datetime.fromisoformat(manifest.hour)
    hot = hot_fingerprints(client, db, hour, hour + timedelta(hours=1), manifest.environment)
    in_warehouse = hot.get((manifest.environment, hour))
    rows = in_warehouse.rows if in_warehouse else 0
    if rows < manifest.rows:
        raise ArchiveError(
            f"after restoring {manifest.object_key} ClickHouse holds {rows} rows of "
            f"{manifest.environment} {hour:%Y-%m-%dT%H}, the archive {manifest.rows}"
        )
    log.info("restored %d rows from %s", inserted, manifest.object_key)
    return RestoredHour(manifest.environment, hour, inserted, manifest.object_key, rows)
