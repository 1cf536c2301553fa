"""The ``cold_archive`` asset: a day of raw events as encrypted Parquet, one file per hour."""

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from dagster import (
    AssetExecutionContext,
    Backoff,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from pydantic import Field

from assets.archive.encryption import ArchiveCrypto
from assets.archive.hours import (
    EVENT_COLUMNS,
    PREFIX,
    Fingerprint,
    Manifest,
    archive_hour,
    hot_fingerprints,
    recorded_manifests,
    retired_among,
    retired_problem,
)
from assets.partitions import DAILY, day_start
from assets.resources import ArchiveStoreResource, WarehouseResource
from assets.sources import usage_events

ARCHIVE_THREADS = 2
# One archive run at a time per instance: the late-events sensor and the daily schedule may
# ask for the same day at once, and two archives of one hour race for its manifest. Set this
# pool's limit to 1 (content-named files keep either outcome restorable; this avoids the work).
ARCHIVE_POOL = "cold_archive"


class ArchiveConfig(Config):
    force: bool = Field(
        default=False, description="Rewrite hours whose verified archive is already current."
    )


def crypto_for(store: ArchiveStoreResource) -> ArchiveCrypto:
    kms = store.settings.kms
    return ArchiveCrypto(store.kms(), kms.key_alias, kms.pii_key_alias, EVENT_COLUMNS)


@asset(
    partitions_def=DAILY,
    group_name="archive",
    deps=[usage_events],
    kinds={"s3", "parquet"},
    pool=ARCHIVE_POOL,
    retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL),
    description="The day's deduplicated raw events as Parquet (zstd) at "
    "s3://<bucket>/events/env=<env>/date=<day>/hour=<HH>/, SSE-KMS on the object and Parquet "
    "modular encryption with KMS-wrapped keys inside; a manifest per file; verified by "
    "reading back. Hours already archived and unchanged are skipped.",
)
def cold_archive(
    context: AssetExecutionContext,
    config: ArchiveConfig,
    warehouse: WarehouseResource,
    archive_store: ArchiveStoreResource,
) -> MaterializeResult:
    day = day_start(context.partition_key)
    end = day + timedelta(days=1)
    started = time.monotonic()
    s3 = archive_store.s3()
    crypto = crypto_for(archive_store)
    sse_key = archive_store.settings.kms.key_alias
    with warehouse.client() as client:
        db = warehouse.database
        hot = hot_fingerprints(client, db, day, end)
        recorded = recorded_manifests(client, db, day, end)
    retired = retired_among(hot, recorded)
    if retired:  # an archive is never replaced by a part of itself
        raise Failure(retired_problem(retired, "archive the day again"), allow_retries=False)
    todo = []
    for (env, hour), expected in sorted(hot.items()):
        known = recorded.get((env, hour))
        current = known is not None and known.status == "verified" and known.fingerprint == expected
        if config.force or not current:
            todo.append((env, hour, expected))

    def archive(item: tuple[str, datetime, Fingerprint]) -> Manifest:
        env, hour, expected = item
        with warehouse.client(ensure=False) as client:
            manifest = archive_hour(
                client, db, s3, archive_store.bucket, crypto, sse_key, env, hour, expected
            )
        context.log.info("archived %s (%d rows)", manifest.object_key, manifest.rows)
        return manifest

    # Two hours at a time: one is exported by ClickHouse while the other is encrypted,
    # uploaded and read back here (pyarrow and the HTTP reads release the GIL).
    with ThreadPoolExecutor(max_workers=ARCHIVE_THREADS) as pool:
        archived = list(pool.map(archive, todo))
    skipped = len(hot) - len(todo)
    rows = sum(m.rows for m in archived)
    size = sum(m.bytes for m in archived)
    elapsed = time.monotonic() - started
    return MaterializeResult(
        metadata={
            "hours_archived": len(archived),
            "hours_already_current": skipped,
            "rows": rows,
            "bytes": size,
            "rows_per_s": round(rows / elapsed) if elapsed > 0 else 0,
            "prefix": f"s3://{archive_store.bucket}/{PREFIX}env=*/date={context.partition_key}/",
            "objects": MetadataValue.json(
                [{"key": m.object_key, "rows": m.rows, "sha256": m.sha256} for m in archived[:48]]
            ),
            "encryption": MetadataValue.json(crypto.describe()),
            "duration_s": round(elapsed, 3),
        }
    )
