"""Benchmark: archiving raw events as encrypted Parquet on S3 (goal >= 1M rows/s).

Generates ``--rows`` events inside the warehouse (``INSERT ... SELECT FROM numbers(N)``) over
``--hours`` hours of one day: random UUID idempotency keys, 20,000 customers, two labels, two
numeric values and the dimensions JSON per event, so the Parquet files are realistic (not a
column of constants that compresses to nothing). Then measures, on a stack of real engines
(SeaweedFS with SSE-KMS, moto KMS, the chdb warehouse):

- ``encrypt_write_rows_per_s``: the archive write itself: Arrow rows in memory -> Parquet (zstd)
  with modular encryption (footer key + PII column key, wrapped by KMS) -> PUT to S3 with
  SSE-KMS, two hours at a time as the asset does. This is "archive rows/s with encryption".
  Split into ``encrypt_rows_per_s`` (Parquet + modular encryption, in memory) and
  ``put_mb_per_s`` (the PUTs; SeaweedFS encrypts with SSE-KMS on the same 2 cores: its CPU is
  ``s3_sse_kms_cpu_s``). ``..._per_cpu_s``: rows over the CPU time this process spent (all its
  threads): the cost, whatever else the machine runs.
- ``verify_rows_per_s``: read back, sha256, decrypt (through KMS), content fingerprint.
- ``export_rows_per_s``: the rows out of ClickHouse (``usage_events FINAL`` as Arrow over the
  warehouse's HTTP interface).
- ``asset_rows_per_s``: the whole ``cold_archive`` asset for the day, materialized by Dagster
  in process (export + encrypt + upload + read-back verification + manifests), with ``force``.

    .venv/bin/python bench/archive.py                 # 4M rows over 4 hours
    .venv/bin/python bench/archive.py --rows 10000000 --hours 10

Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster_bench_stack import load_average, say, stack
from proc_cpu import cpu_seconds_if_running

ENV = "bench-archive"
DAY = datetime(2025, 3, 4, tzinfo=UTC)


def generate(client: Any, db: str, rows: int, hours: int) -> float:
    started = time.perf_counter()
    client.command(
        f"""
        INSERT INTO {db}.usage_events
        SELECT '{ENV}', concat('cust-', toString(rand() % 20000)),
               ['', 'team-a', 'team-b'][number % 3 + 1],
               ['api_call', 'llm.tokens', 'image.generated'][rand(1) % 3 + 1],
               toString(generateUUIDv4(number)),
               toDateTime64('{DAY:%Y-%m-%d} 00:00:00', 3, 'UTC')
                   + toIntervalMillisecond(intDiv(number * {hours * 3_600_000}, {rows})),
               now64(3),
               map('model', ['gpt-4o', 'gpt-4o-mini', 'o1'][rand(2) % 3 + 1],
                   'region', ['eu', 'us', 'ap'][rand(3) % 3 + 1]),
               map('tokens', toFloat64(rand(4) % 8000), 'latency_ms', toFloat64(rand(5) % 900)),
               concat('{{"latency_ms":', toString(rand(5) % 900), ',"model":"gpt-4o","tokens":',
                      toString(rand(4) % 8000), '}}')
        FROM numbers({rows})
        """,
        settings={"max_insert_threads": 2},
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--hours", type=int, default=4)
    parser.add_argument("--stack-settings", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from dagster import AssetSelection, materialize

    from assets.archive.defs import ARCHIVE_THREADS, crypto_for
    from assets.archive.hours import (
        decode_parquet,
        encode_parquet,
        export_hour,
        fingerprint,
        hot_fingerprints,
    )
    from assets.partitions import day_key
    from assets.resources import ArchiveStoreResource
    from assets.warehouse_tables import ensure_tables
    from byoc_platform.clients import clickhouse
    from dagster_project.assembly import ASSETS, CHECKS
    from dagster_project.resources import local_resources

    components = ["kms", "s3", "warehouse", "control-plane"]
    with stack(components, args.stack_settings) as (settings, config, pids):
        db = settings.clickhouse.database
        client = clickhouse(settings, send_receive_timeout=600)
        ensure_tables(client, db)
        client.command(f"DELETE FROM {db}.usage_events WHERE environment = '{ENV}'")
        gen_s = generate(client, db, args.rows, args.hours)
        hot = hot_fingerprints(client, db, DAY, DAY + timedelta(days=1), ENV)
        rows = sum(fp.rows for fp in hot.values())
        say(f"generated {rows:,} rows over {len(hot)} hours in {gen_s:.1f}s")

        store = ArchiveStoreResource(config_file=config, create_missing_keys=True)
        s3 = store.s3()
        crypto = crypto_for(store)
        bucket, sse = store.bucket, settings.kms.key_alias

        cpu_before = cpu_seconds_if_running(pids.get("warehouse"))
        t0 = time.perf_counter()
        tables = {hour: export_hour(client, db, ENV, hour) for (_env, hour) in sorted(hot)}
        export_s = time.perf_counter() - t0
        cpu_after = cpu_seconds_if_running(pids.get("warehouse"))
        export_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before

        bodies: dict[datetime, bytes] = {}

        def encode(item: tuple[datetime, Any]) -> None:
            bodies[item[0]] = encode_parquet(item[1], crypto)

        def put(item: tuple[datetime, bytes]) -> None:
            hour, body = item
            key = f"bench/{ENV}/{hour:%Y%m%dT%H}.parquet"
            s3.put_object(
                Bucket=bucket, Key=key, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=sse
            )

        # As the asset does it: ARCHIVE_THREADS hours at a time.
        t0, cpu0 = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(max_workers=ARCHIVE_THREADS) as pool:
            list(pool.map(encode, tables.items()))
        encode_s, encode_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        s3_before = cpu_seconds_if_running(pids.get("s3"))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=ARCHIVE_THREADS) as pool:
            list(pool.map(put, bodies.items()))
        put_s = time.perf_counter() - t0
        s3_after = cpu_seconds_if_running(pids.get("s3"))
        write_s = encode_s + put_s
        sizes = {h: len(b) for h, b in bodies.items()}
        digests = {h: hashlib.sha256(b).hexdigest() for h, b in bodies.items()}

        t0, cpu0 = time.perf_counter(), time.process_time()
        for hour, table in tables.items():
            key = f"bench/{ENV}/{hour:%Y%m%dT%H}.parquet"
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == digests[hour]
            assert fingerprint(decode_parquet(body, crypto)) == fingerprint(table)
        verify_s, verify_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        mb = sum(sizes.values()) / 1e6
        say(
            f"export {export_s:.2f}s, encrypt {encode_s:.2f}s, put {put_s:.2f}s ({mb:.1f} MB), "
            f"verify {verify_s:.2f}s"
        )

        before = cpu_seconds_if_running(pids.get("warehouse"))
        t0 = time.perf_counter()
        result = materialize(
            [*ASSETS, *CHECKS],
            selection=AssetSelection.assets("cold_archive").without_checks(),
            partition_key=day_key(DAY),
            resources=local_resources(config),
            run_config={"ops": {"cold_archive": {"config": {"force": True}}}},
        )
        asset_s = time.perf_counter() - t0
        after = cpu_seconds_if_running(pids.get("warehouse"))
        assert result.success
        say(f"cold_archive asset: {asset_s:.2f}s")
        figures = {
            "rows": rows,
            "hours": len(hot),
            "parquet_mb": round(mb, 1),
            "bytes_per_row": round(sum(sizes.values()) / rows, 1),
            "encrypt_write_rows_per_s": round(rows / write_s),
            "encrypt_rows_per_s": round(rows / encode_s),
            "encrypt_rows_per_cpu_s": round(rows / encode_cpu),
            "put_mb_per_s": round(sum(sizes.values()) / 1e6 / put_s, 1),
            "s3_sse_kms_cpu_s": None
            if s3_before is None or s3_after is None
            else round(s3_after - s3_before, 2),
            "verify_rows_per_s": round(rows / verify_s),
            "verify_rows_per_cpu_s": round(rows / verify_cpu),
            "export_rows_per_s": round(rows / export_s),
            "export_warehouse_cpu_s": None if export_cpu is None else round(export_cpu, 2),
            "asset_rows_per_s": round(rows / asset_s),
            "asset_s": round(asset_s, 2),
            "warehouse_cpu_s_in_asset": None
            if before is None or after is None
            else round(after - before, 2),
            "goal_rows_per_s": 1_000_000,
            "load_average": round(load_average(), 1),
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
