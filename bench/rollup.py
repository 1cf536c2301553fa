"""Benchmark: the hourly rollup of an hour of 10M raw events (goal < 5 s).

Generates the events INSIDE the warehouse (``INSERT ... SELECT FROM numbers(N)``: 10M rows
through the HTTP front would take minutes and measure the wrong thing) in one hour of one
environment: 5,000 customers, 3 resources, 3 event names, numeric values and labels; 1% of
the rows are replays of earlier events (same dedup key), which FINAL must collapse. The
control plane holds four meters for them (COUNT, SUM, MAX, UNIQUE).

Then, each ``--repeat`` times:
- ``rollup_s``: the rollup itself (``rollup_hour``: the environments of the hour, one
  INSERT ... SELECT from ``usage_events FINAL`` per environment, the revision header, the
  deletion of the previous revision), i.e. what re-materializing an hour costs in ClickHouse;
- ``reconcile_s``: the blocking reconciliation check (recomputation along another path);
- ``asset_s``: the whole ``hourly_usage_rollup`` asset materialized by Dagster in process
  (catalog fetch from the control plane, rollup, metadata), without its checks.
``warehouse_cpu_s``: CPU the warehouse process spent in the rollup (contention-proof). The
first repeat runs while ClickHouse still merges the parts of the fresh 10M-row insert.

``--reports N`` adds N usage reports (reportUsage) to the hour, generated the same way: 5,000
customers, 9 in 10 DELTA reports of one feature, 1 in 10 SET reports of another, 1% of them
received twice; the rollup, reconciliation and asset then also roll them up.

    .venv/bin/python bench/rollup.py                   # 10M events, 3 repeats
    .venv/bin/python bench/rollup.py --events 1000000  # smaller
    .venv/bin/python bench/rollup.py --reports 1000000 # with 1M usage reports

Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster_bench_stack import load_average, say, stack
from proc_cpu import cpu_seconds_if_running

from byoc_platform.settings import Settings

ENV = "bench-rollup"
HOUR = datetime(2025, 3, 3, 13, tzinfo=UTC)


def catalog(settings: Settings) -> None:
    from byoc_platform.catalog import Customer, Feature, Meter
    from byoc_platform.control_plane.client import ControlPlaneClient

    features = [
        Feature(id="api-calls", meter=Meter(eventName="api_call", aggregation="COUNT")),
        Feature(
            id="tokens", meter=Meter(eventName="llm.tokens", aggregation="SUM", field="tokens")
        ),
        Feature(
            id="peak-latency",
            meter=Meter(eventName="llm.tokens", aggregation="MAX", field="latency_ms"),
        ),
        Feature(
            id="models", meter=Meter(eventName="llm.tokens", aggregation="UNIQUE", field="model")
        ),
    ]
    with ControlPlaneClient.from_settings(settings) as cp:
        for f in features:
            cp.put_entity(ENV, f)
        cp.put_entity(ENV, Feature(id="agent-steps", meterType="Incremental"))
        cp.put_entity(ENV, Feature(id="seats", meterType="Fluctuating"))
        cp.put_entity(ENV, Customer(id="cust-0"))


def generate(client: Any, db: str, events: int) -> float:
    start = HOUR.strftime("%Y-%m-%d %H:%M:%S")
    started = time.perf_counter()
    client.command(
        f"""
        INSERT INTO {db}.usage_events
        SELECT '{ENV}', concat('cust-', toString(number % 5000)),
               ['', 'team-a', 'team-b'][number % 3 + 1],
               ['api_call', 'llm.tokens', 'image.generated'][intDiv(number, 7) % 3 + 1],
               concat('evt-', toString(number)),
               toDateTime64('{start}', 3, 'UTC')
                   + toIntervalMillisecond(intDiv(number * 3600000, {events})),
               now64(3),
               map('model', ['gpt-4o', 'gpt-4o-mini', 'o1'][number % 3 + 1]),
               map('tokens', toFloat64(number % 4000), 'latency_ms', toFloat64(number % 900)),
               '{{}}'
        FROM numbers({events})
        """,
        settings={"max_insert_threads": 2},
    )
    # Replays: 1% of the events again, same dedup keys (the stream's crash-replay case).
    client.command(
        f"INSERT INTO {db}.usage_events SELECT * FROM {db}.usage_events "
        f"WHERE environment = '{ENV}' AND cityHash64(idempotency_key) % 100 = 0"
    )
    return time.perf_counter() - started


def generate_reports(client: Any, db: str, reports: int) -> float:
    start = HOUR.strftime("%Y-%m-%d %H:%M:%S")
    started = time.perf_counter()
    client.command(
        f"""
        INSERT INTO {db}.usage_reports
        SELECT '{ENV}', concat('cust-', toString(number % 5000)),
               ['', 'team-a', 'team-b'][number % 3 + 1],
               if(number % 10 = 0, 'seats', 'agent-steps'),
               concat('rep-', toString(number)),
               toFloat64(number % 97),
               if(number % 10 = 0, 'SET', 'DELTA'),
               '',
               toDateTime64('{start}', 3, 'UTC')
                   + toIntervalMillisecond(intDiv(number * 3600000, {reports})),
               toDateTime64('{start}', 3, 'UTC')
                   + toIntervalMillisecond(intDiv(number * 3600000, {reports})),
               '{{}}'
        FROM numbers({reports})
        """
    )
    # 1% received twice (a retried call): a later receipt, counted by nobody.
    client.command(
        f"INSERT INTO {db}.usage_reports SELECT * REPLACE (received_at + 1 AS received_at, "
        f"value + 1000 AS value) FROM {db}.usage_reports "
        f"WHERE environment = '{ENV}' AND cityHash64(report_id) % 100 = 0"
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reports", type=int, default=0)
    parser.add_argument("--stack-settings", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from dagster import AssetSelection, materialize

    from assets.partitions import hour_key
    from assets.quality.reconciliation import reconcile
    from assets.rollups.compute import rollup_hour
    from assets.rollups.defs import meters_for
    from assets.warehouse_tables import ensure_tables
    from byoc_platform.clients import clickhouse
    from dagster_project.assembly import ASSETS, CHECKS
    from dagster_project.resources import local_resources

    with stack(["warehouse", "control-plane"], args.stack_settings) as (settings, config, pids):
        from assets.resources import ControlPlaneResource

        db = settings.clickhouse.database
        client = clickhouse(settings, send_receive_timeout=600)
        ensure_tables(client, db)
        catalog(settings)
        client.command(f"DELETE FROM {db}.usage_events WHERE environment = '{ENV}'")
        client.command(f"DELETE FROM {db}.usage_reports WHERE environment = '{ENV}'")
        gen_s = generate(client, db, args.events)
        if args.reports:
            gen_s += generate_reports(client, db, args.reports)
        raw = client.command(
            f"SELECT count() FROM {db}.usage_events FINAL WHERE environment = '{ENV}' "
            "AND event_time >= {s:DateTime('UTC')} AND event_time < {e:DateTime('UTC')}",
            parameters={
                "s": HOUR.strftime("%Y-%m-%d %H:%M:%S"),
                "e": (HOUR + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
        stored = client.command(
            f"SELECT count() FROM {db}.usage_events WHERE environment = '{ENV}'"
        )
        say(f"generated {stored:,} rows ({raw:,} distinct events) in {gen_s:.1f}s")
        meters = meters_for(ControlPlaneResource(config_file=config), [ENV])

        rollup_s, reconcile_s, asset_s, cpu = [], [], [], []
        for i in range(args.repeat):
            before = cpu_seconds_if_running(pids.get("warehouse"))
            t0 = time.perf_counter()
            header = rollup_hour(client, db, HOUR, meters)
            rollup_s.append(time.perf_counter() - t0)
            after = cpu_seconds_if_running(pids.get("warehouse"))
            if before is not None and after is not None:
                cpu.append(after - before)
            t0 = time.perf_counter()
            check = reconcile(client, db, HOUR)
            reconcile_s.append(time.perf_counter() - t0)
            assert check.passed, check.reason
            t0 = time.perf_counter()
            result = materialize(
                [*ASSETS, *CHECKS],
                selection=AssetSelection.assets("hourly_usage_rollup").without_checks(),
                partition_key=hour_key(HOUR),
                resources=local_resources(config),
            )
            asset_s.append(time.perf_counter() - t0)
            assert result.success
            say(
                f"#{i + 1}: rollup {rollup_s[-1]:.2f}s ({header.rows} rows, {header.events:,} "
                f"metered events), reconcile {reconcile_s[-1]:.2f}s, asset {asset_s[-1]:.2f}s"
            )
        figures = {
            "events": raw,
            "reports": args.reports,
            "rows_stored_with_replays": stored,
            "generate_s": round(gen_s, 2),
            "rollup_s_runs": [round(t, 3) for t in rollup_s],
            "rollup_s_min": round(min(rollup_s), 3),
            "rollup_s_median": round(statistics.median(rollup_s), 3),
            "reconcile_s_median": round(statistics.median(reconcile_s), 3),
            "asset_s_runs": [round(t, 3) for t in asset_s],
            "asset_s_median": round(statistics.median(asset_s), 3),
            "warehouse_cpu_s_runs": [round(c, 2) for c in cpu],
            "warehouse_cpu_s_median": round(statistics.median(cpu), 3) if cpu else None,
            "rollup_rows": header.rows,
            "goal_s": 5.0,
            "load_average": round(load_average(), 1),
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
