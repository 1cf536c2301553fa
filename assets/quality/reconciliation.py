"""Invariant 3: the rollup of an hour equals the sum over the deduplicated raw events (and
over the hour's usage reports).

The expected values are recomputed along a DIFFERENT path than the rollup's SQL: one generic
scan of ``usage_events FINAL`` grouped by (environment, customer, resource, event name) with
``count()``, ``sumMap``/``maxMap`` of the numeric values and ``uniqExactMap`` of the labels,
mapped to features in Python through the meters the rollup recorded; and the hour's reports
found by numbering each report id's receipts (``row_number()``, where the rollup takes
``argMin``), first receipts only, DELTA sum and last SET. A stale rollup (late events or
reports arrived since), a partial write or a bug in either path shows up as a mismatch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from assets.meters import MeterSpec
from assets.rollups.compute import (
    FINAL_SETTINGS,
    REPORTED_DELTA,
    REPORTED_SET,
    environments_in,
    hour_bounds,
    latest_revision,
    read_rollup,
    receipts_near,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Key = tuple[str, str, str, str, str]  # environment, customer, resource, feature, aggregation


@dataclass
class Reconciliation:
    hour: datetime
    revision: int | None
    passed: bool
    expected_rows: int
    actual_rows: int
    expected_total: float
    actual_total: float
    mismatches: list[dict] = field(default_factory=list)
    reason: str = ""


def close(a: float, b: float) -> bool:
    # Float sums in a different order differ in the last bits only.
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def expected_from_raw(
    client: Client, db: str, hour: datetime, meters_by_env: dict[str, list[MeterSpec]]
) -> dict[Key, float]:
    envs = sorted(meters_by_env)
    if not envs:
        return {}
    params = {**hour_bounds(hour), "envs": envs}
    where = (
        "environment IN {envs:Array(String)} AND event_time >= {start:DateTime('UTC')} "
        "AND event_time < {end:DateTime('UTC')}"
    )
    groups = client.query(
        f"SELECT environment, customer_id, resource_id, event_name, count(), "
        f"sumMap(`values`), maxMap(`values`), uniqExactMap(labels) "
        f"FROM {db}.usage_events FINAL WHERE {where} "
        "GROUP BY environment, customer_id, resource_id, event_name",
        parameters=params,
        settings=FINAL_SETTINGS,
    ).result_rows
    expected: dict[Key, float] = {}
    by_event: dict[tuple[str, str], list[MeterSpec]] = defaultdict(list)
    for env, meters in meters_by_env.items():
        for m in meters:
            by_event[(env, m.event_name)].append(m)
    for env, cust, res, name, count, sums, maxs, uniques in groups:
        for m in by_event.get((env, name), []):
            key = (env, cust, res, m.feature_id, m.aggregation)
            if m.aggregation == "COUNT":
                expected[key] = float(count)
            elif m.aggregation == "SUM" and m.field in sums:
                expected[key] = float(sums[m.field])
            elif m.aggregation == "SUM":
                expected[key] = 0.0  # events without the field: counted, worth nothing
            elif m.aggregation == "MAX" and m.field in maxs:
                expected[key] = float(maxs[m.field])
            elif m.aggregation == "UNIQUE" and m.field in uniques:
                expected[key] = float(uniques[m.field])
    return expected


def expected_from_reports(
    client: Client, db: str, hour: datetime, envs: list[str]
) -> dict[Key, float]:
    """Per (key, REPORTED_DELTA / REPORTED_SET): the hour's reports, each at its first receipt,
    found by numbering each id's receipts (a window function, not the rollup's argMin)."""
    expected: dict[Key, float] = {}
    for env in envs:
        rows = client.query(
            f"""
            SELECT customer_id, resource_id, feature_id, update_behavior,
                   sum(value), argMax(value, (report_time, received_at))
            FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY customer_id, report_id ORDER BY received_at) AS receipt
                FROM {db}.usage_reports WHERE {receipts_near(db)}
            )
            WHERE receipt = 1 AND report_time >= {{start:DateTime('UTC')}}
              AND report_time < {{end:DateTime('UTC')}}
            GROUP BY customer_id, resource_id, feature_id, update_behavior
            """,
            parameters={**hour_bounds(hour), "env": env},
        ).result_rows
        for cust, res, feature, behavior, total, last in rows:
            if behavior == "SET":
                expected[(env, cust, res, feature, REPORTED_SET)] = float(last)
            else:
                expected[(env, cust, res, feature, REPORTED_DELTA)] = float(total)
    return expected


def reconcile(client: Client, db: str, hour: datetime, sample: int = 20) -> Reconciliation:
    """Compare the hour's latest rollup with a recomputation from the raw events."""
    header = latest_revision(client, db, hour)
    raw_envs = environments_in(client, db, hour, hour + timedelta(hours=1))
    if header is None:
        return Reconciliation(
            hour,
            None,
            passed=not raw_envs,
            expected_rows=0,
            actual_rows=0,
            expected_total=0.0,
            actual_total=0.0,
            reason=""
            if not raw_envs
            else f"no rollup for an hour with events or reports of {raw_envs}",
        )
    unrolled = sorted(set(raw_envs) - set(header.meters))
    expected = expected_from_raw(client, db, hour, header.meters)
    expected |= expected_from_reports(client, db, hour, sorted(header.meters))
    actual = {row.source: row.value for row in read_rollup(client, db, hour, header.revision)}
    mismatches = []
    for key in sorted(set(expected) | set(actual)):
        want, got = expected.get(key), actual.get(key)
        if want is None or got is None or not close(want, got):
            env, cust, res, feature, aggregation = key
            mismatches.append(
                {
                    "environment": env,
                    "customer_id": cust,
                    "resource_id": res,
                    "feature_id": feature,
                    "aggregation": aggregation,
                    "expected": want,
                    "rollup": got,
                }
            )
    reason = ""
    if mismatches:
        reason = f"{len(mismatches)} rollup rows differ from the raw events and reports"
    elif unrolled:
        reason = f"environments with events or reports but not in the rollup: {unrolled}"
    return Reconciliation(
        hour=hour,
        revision=header.revision,
        passed=not mismatches and not unrolled,
        expected_rows=len(expected),
        actual_rows=len(actual),
        expected_total=sum(expected.values()),
        actual_total=sum(actual.values()),
        mismatches=mismatches[:sample],
        reason=reason,
    )
