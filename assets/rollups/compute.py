"""The rollup of one hour, computed inside ClickHouse from the deduplicated raw events and
the aggregated usage reports.

``usage_events`` is read with FINAL (ReplacingMergeTree dedups only at merge time, Lago #4725),
one scan per environment; each of the environment's meters becomes one column of the scan,
unpivoted with ARRAY JOIN, and the rows go straight into ``usage_hourly`` under a new revision
(INSERT ... SELECT: no row leaves the warehouse). The revision header is written last.

``usage_reports`` (REST/GraphQL reportUsage, gRPC ReportUsage) rolls up into rows of their own,
with no event name: ``REPORTED_DELTA`` sums the hour's DELTA reports (published like a SUM
meter), ``REPORTED_SET`` keeps the hour's last SET value (a level, sent as SET: see
assets/publish/levels.py). Each report counts once, by its id, at its first receipt (the one
the enforcement counters counted), in the hour of its createdAt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from assets.meters import MeterSpec, decode_meters, encode_meters
from assets.partitions import ch_time

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# Settings of every FINAL read: usage_events is partitioned by day, so rows of different
# partitions never share a dedup key and FINAL need not merge across partitions.
FINAL_SETTINGS = {"do_not_merge_across_partitions_select_final": 1}


@dataclass(frozen=True)
class RollupRow:
    environment: str
    customer_id: str
    resource_id: str
    feature_id: str
    event_name: str
    aggregation: str
    field: str
    value: float
    events: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.environment, self.customer_id, self.resource_id, self.feature_id)

    @property
    def source(self) -> tuple[str, str, str, str, str]:
        """The key and the aggregation: a feature may have a meter row and report rows."""
        return (*self.key, self.aggregation)


@dataclass
class RollupRevision:
    hour: datetime
    revision: int
    rows: int
    events: int
    value_total: float
    meters: dict[str, list[MeterSpec]] = field(default_factory=dict)


def new_revision() -> int:
    """A revision number that grows with time (microseconds), so the latest one wins."""
    return time.time_ns() // 1000


def hour_bounds(hour: datetime) -> dict[str, str]:
    return {"start": ch_time(hour), "end": ch_time(hour + timedelta(hours=1))}


# Rollup rows of aggregated usage reports (usage_hourly.aggregation; event_name is '').
REPORTED_DELTA = "REPORTED_DELTA"  # the sum of the hour's DELTA reports
REPORTED_SET = "REPORTED_SET"  # the hour's last SET value


def environments_in(client: Client, db: str, start: datetime, end: datetime) -> list[str]:
    """Environments with raw events or usage reports in [start, end)."""
    rows = client.query(
        f"SELECT DISTINCT environment FROM {db}.usage_events "
        "WHERE event_time >= {start:DateTime('UTC')} AND event_time < {end:DateTime('UTC')} "
        "UNION DISTINCT "
        f"SELECT DISTINCT environment FROM {db}.usage_reports "
        "WHERE report_time >= {start:DateTime('UTC')} AND report_time < {end:DateTime('UTC')}",
        parameters={"start": ch_time(start), "end": ch_time(end)},
    ).result_rows
    return sorted(r[0] for r in rows)


# Receipts of one report id further apart than Stigg's idempotency window (7 days) are not
# looked at together: it bounds the reads to the hour's neighbourhood (usage_reports is
# partitioned by day of report_time).
RECEIPTS_WINDOW = "INTERVAL 7 DAY"


def receipts_near(db: str) -> str:
    """SQL condition: the receipts of environment ``env``, near [start, end), of the report
    ids with a receipt in [start, end) (their 64-bit hash: a collision only reads one more
    report, which its own first receipt then places in its own hour)."""
    return f"""
        environment = {{env:String}}
        AND report_time >= {{start:DateTime('UTC')}} - {RECEIPTS_WINDOW}
        AND report_time < {{end:DateTime('UTC')}} + {RECEIPTS_WINDOW}
        AND cityHash64(customer_id, report_id) IN (
            SELECT cityHash64(customer_id, report_id) FROM {db}.usage_reports
            WHERE environment = {{env:String}} AND report_time >= {{start:DateTime('UTC')}}
              AND report_time < {{end:DateTime('UTC')}})
    """


def first_receipts(db: str) -> str:
    """SQL of each report of the hour as first received: one row per (customer, report id)
    whose first receipt's createdAt is in [start, end) of environment ``env``. A report logged
    again under its id (a retried call, a reused idempotency key) is a later receipt, counted
    by nobody, even if its createdAt moved to another hour (within 7 days)."""
    return f"""
        SELECT customer_id, report_id,
               argMin(resource_id, received_at) AS resource,
               argMin(feature_id, received_at) AS feature,
               argMin(value, received_at) AS amount,
               argMin(update_behavior, received_at) AS behavior,
               argMin(report_time, received_at) AS at,
               min(received_at) AS first_received
        FROM {db}.usage_reports
        WHERE {receipts_near(db)}
        GROUP BY customer_id, report_id
        HAVING at >= {{start:DateTime('UTC')}} AND at < {{end:DateTime('UTC')}}
    """


def _meter_columns(meters: list[MeterSpec]) -> tuple[str, dict[str, Any]]:
    """One ``tuple(index, value, events)`` per meter, with every name bound as a parameter."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for i, m in enumerate(meters):
        params[f"e{i}"] = m.event_name
        params[f"f{i}"] = m.field
        is_event = f"event_name = {{e{i}:String}}"
        if m.aggregation == "COUNT":
            value = f"toFloat64(countIf({is_event}))"
            events = f"countIf({is_event})"
        elif m.aggregation == "SUM":
            has = f"{is_event} AND mapContains(`values`, {{f{i}:String}})"
            value = f"sumIf(`values`[{{f{i}:String}}], {has})"
            events = f"countIf({is_event})"
        elif m.aggregation == "MAX":
            has = f"{is_event} AND mapContains(`values`, {{f{i}:String}})"
            value = f"maxIf(`values`[{{f{i}:String}}], {has})"
            events = f"countIf({has})"
        elif m.aggregation == "UNIQUE":
            has = f"{is_event} AND mapContains(labels, {{f{i}:String}})"
            value = f"toFloat64(uniqExactIf(labels[{{f{i}:String}}], {has}))"
            events = f"countIf({has})"
        else:  # pragma: no cover - catalog.Aggregation is closed
            raise ValueError(f"unknown aggregation {m.aggregation!r}")
        parts.append(f"tuple({i}, {value}, {events})")
    return ", ".join(parts), params


def insert_rollup(
    client: Client,
    db: str,
    hour: datetime,
    environment: str,
    meters: list[MeterSpec],
    revision: int,
) -> None:
    """INSERT ... SELECT the environment's rollup rows of the hour under ``revision``."""
    if not meters:
        return
    columns, params = _meter_columns(meters)
    n = len(meters)
    features = "[" + ", ".join(f"{{m{i}:String}}" for i in range(n)) + "]"
    names = "[" + ", ".join(f"{{e{i}:String}}" for i in range(n)) + "]"
    aggs = "[" + ", ".join(f"{{a{i}:String}}" for i in range(n)) + "]"
    fields = "[" + ", ".join(f"{{f{i}:String}}" for i in range(n)) + "]"
    for i, m in enumerate(meters):
        params[f"m{i}"] = m.feature_id
        params[f"a{i}"] = m.aggregation
    params.update(hour_bounds(hour), env=environment, revision=revision)
    client.command(
        f"""
        INSERT INTO {db}.usage_hourly
            (hour, revision, environment, customer_id, resource_id, feature_id, event_name,
             aggregation, field, value, events)
        SELECT {{start:DateTime('UTC')}}, {{revision:UInt64}}, environment, customer_id,
               resource_id, {features}[p.1 + 1], {names}[p.1 + 1], {aggs}[p.1 + 1],
               {fields}[p.1 + 1], p.2, p.3
        FROM (
            SELECT environment, customer_id, resource_id, [{columns}] AS per
            FROM {db}.usage_events FINAL
            WHERE environment = {{env:String}}
              AND event_time >= {{start:DateTime('UTC')}} AND event_time < {{end:DateTime('UTC')}}
            GROUP BY environment, customer_id, resource_id
        )
        ARRAY JOIN per AS p
        WHERE p.3 > 0
        """,
        parameters=params,
        settings=FINAL_SETTINGS,
    )


def insert_reports(
    client: Client, db: str, hour: datetime, environment: str, revision: int
) -> None:
    """INSERT ... SELECT the environment's report rows of the hour under ``revision``: per
    (customer, resource, feature), the sum of DELTA reports and the last SET (by createdAt,
    then receipt)."""
    client.command(
        f"""
        INSERT INTO {db}.usage_hourly
            (hour, revision, environment, customer_id, resource_id, feature_id, event_name,
             aggregation, field, value, events)
        SELECT {{start:DateTime('UTC')}}, {{revision:UInt64}}, {{env:String}}, customer_id,
               resource, feature, '',
               if(behavior = 'SET', '{REPORTED_SET}', '{REPORTED_DELTA}'), '',
               if(behavior = 'SET', argMax(amount, (at, first_received)), sum(amount)),
               count()
        FROM ({first_receipts(db)})
        GROUP BY customer_id, resource, feature, behavior
        """,
        parameters={**hour_bounds(hour), "env": environment, "revision": revision},
    )


def write_revision_header(
    client: Client, db: str, hour: datetime, revision: int, meters: dict[str, list[MeterSpec]]
) -> RollupRevision:
    """Summarise the revision's rows and publish it as the hour's latest (written last)."""
    rows, events, total = client.query(
        f"SELECT count(), sum(events), sum(value) FROM {db}.usage_hourly "
        "WHERE hour = {start:DateTime('UTC')} AND revision = {revision:UInt64}",
        parameters={**hour_bounds(hour), "revision": revision},
    ).result_rows[0]
    client.insert(
        f"{db}.usage_hourly_revisions",
        [[hour, revision, rows, events, total, encode_meters(meters), datetime.now(hour.tzinfo)]],
        column_names=["hour", "revision", "rows", "events", "value_total", "meters", "created_at"],
    )
    return RollupRevision(hour, revision, int(rows), int(events), float(total or 0.0), meters)


def drop_older_revisions(client: Client, db: str, hour: datetime, revision: int) -> None:
    """Free the rows of superseded revisions (readers never see them: they use the latest)."""
    client.command(
        f"DELETE FROM {db}.usage_hourly "
        "WHERE hour = {start:DateTime('UTC')} AND revision < {revision:UInt64}",
        parameters={**hour_bounds(hour), "revision": revision},
    )


def latest_revision(client: Client, db: str, hour: datetime) -> RollupRevision | None:
    rows = client.query(
        f"SELECT revision, rows, events, value_total, meters FROM {db}.usage_hourly_revisions "
        "WHERE hour = {start:DateTime('UTC')} ORDER BY revision DESC LIMIT 1",
        parameters=hour_bounds(hour),
    ).result_rows
    if not rows:
        return None
    revision, n, events, total, meters = rows[0]
    return RollupRevision(
        hour, int(revision), int(n), int(events), float(total), decode_meters(meters)
    )


def read_rollup(
    client: Client, db: str, hour: datetime, revision: int | None = None
) -> list[RollupRow]:
    """The rows of the hour's latest revision (or of ``revision``)."""
    if revision is None:
        latest = latest_revision(client, db, hour)
        if latest is None:
            return []
        revision = latest.revision
    result = client.query(
        f"SELECT environment, customer_id, resource_id, feature_id, event_name, aggregation, "
        f"field, value, events FROM {db}.usage_hourly "
        "WHERE hour = {start:DateTime('UTC')} AND revision = {revision:UInt64} "
        "ORDER BY environment, customer_id, resource_id, feature_id, aggregation",
        parameters={**hour_bounds(hour), "revision": revision},
    )
    return [RollupRow(*(r[:7]), float(r[7]), int(r[8])) for r in result.result_rows]


def rollup_hour(
    client: Client, db: str, hour: datetime, meters_by_env: dict[str, list[MeterSpec]]
) -> RollupRevision:
    """Roll up one hour for every environment given (its meters' events and its usage
    reports); replaces the hour's previous rollup."""
    revision = new_revision()
    for environment, meters in sorted(meters_by_env.items()):
        insert_rollup(client, db, hour, environment, meters, revision)
        insert_reports(client, db, hour, environment, revision)
    header = write_revision_header(client, db, hour, revision, meters_by_env)
    drop_older_revisions(client, db, hour, revision)
    return header
