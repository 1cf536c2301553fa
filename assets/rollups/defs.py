"""The ``hourly_usage_rollup`` asset."""

import logging
import time
from collections import defaultdict
from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    Backoff,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from assets.meters import MeterSpec, fetch_meters
from assets.partitions import HOURLY, hour_start
from assets.resources import ControlPlaneResource, WarehouseResource
from assets.rollups.compute import environments_in, rollup_hour
from assets.sources import usage_events

log = logging.getLogger(__name__)


def meters_for(
    control_plane: ControlPlaneResource, environments: list[str]
) -> dict[str, list[MeterSpec]]:
    """Every environment's meters; an environment the control plane refuses has none."""
    from byoc_platform.control_plane.client import ControlPlaneRequestError

    out: dict[str, list[MeterSpec]] = {}
    with control_plane.catalog() as catalog:
        for env in environments:
            try:
                out[env] = fetch_meters(catalog, env)
            except ControlPlaneRequestError as exc:  # e.g. an invalid environment id
                if exc.status >= 500 or exc.status == 401:
                    raise
                log.warning("no catalog for environment %r: %s", env, exc)
                out[env] = []
    return out


def totals_table(rows: list[tuple[str, str, float, int]]) -> str:
    lines = ["| environment | feature | value | events |", "|---|---|---:|---:|"]
    lines += [f"| {e} | {f} | {v:g} | {n} |" for e, f, v, n in rows[:50]]
    return "\n".join(lines)


@asset(
    partitions_def=HOURLY,
    group_name="rollups",
    deps=[usage_events],
    kinds={"clickhouse"},
    retry_policy=RetryPolicy(max_retries=3, delay=10, backoff=Backoff.EXPONENTIAL),
    description="Usage of each hour per (environment, customer, resource, feature), "
    "from the deduplicated raw events and the catalog's meters. Re-materializing an hour "
    "replaces it.",
)
def hourly_usage_rollup(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    control_plane: ControlPlaneResource,
) -> MaterializeResult:
    hour = hour_start(context.partition_key)
    started = time.monotonic()
    with warehouse.client() as client:
        db = warehouse.database
        environments = environments_in(client, db, hour, hour + timedelta(hours=1))
        meters = meters_for(control_plane, environments)
        header = rollup_hour(client, db, hour, meters)
        per_feature = client.query(
            f"SELECT environment, feature_id, sum(value), sum(events) FROM {db}.usage_hourly "
            "WHERE hour = {h:DateTime('UTC')} AND revision = {r:UInt64} "
            "GROUP BY environment, feature_id ORDER BY environment, feature_id",
            parameters={"h": hour.strftime("%Y-%m-%d %H:%M:%S"), "r": header.revision},
        ).result_rows
    totals: dict[str, float] = defaultdict(float)
    for env, _feature, value, _events in per_feature:
        totals[env] += value
    unmetered = sorted(env for env, ms in meters.items() if not ms)
    context.log.info(
        "rolled up %s: %d rows, %d events, revision %d",
        context.partition_key,
        header.rows,
        header.events,
        header.revision,
    )
    return MaterializeResult(
        metadata={
            "revision": header.revision,
            "rows": header.rows,
            "events": header.events,
            "value_total": header.value_total,
            "environments": MetadataValue.json(sorted(meters)),
            "environments_without_meters": MetadataValue.json(unmetered),
            "totals_by_feature": MetadataValue.md(
                totals_table([(e, f, float(v), int(n)) for e, f, v, n in per_feature])
            ),
            "duration_s": round(time.monotonic() - started, 3),
        }
    )
