"""The ``hourly_usage_rollup`` asset."""

import logging
import time
from collections import defaultdict
from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    Backoff,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from assets.archive.hours import retired_hours, retired_problem
from assets.meters import MeterSpec, fetch_meters
from assets.partitions import HOURLY, HOURS_PER_RUN, hour_key, hour_start, quietly
from assets.resources import ControlPlaneResource, WarehouseResource
from assets.rollups.compute import (
    RollupRevision,
    environments_in,
    latest_revision,
    rollup_hour,
)
from assets.sources import usage_events, usage_reports

log = logging.getLogger(__name__)

# The control plane's answers that mean "no such environment" (its catalog is empty).
UNKNOWN_ENVIRONMENT = {400, 404}


def meters_for(
    control_plane: ControlPlaneResource, environments: list[str]
) -> dict[str, list[MeterSpec]]:
    """Every environment's meters; an environment the control plane does not know (400, 404)
    has none. Any other refusal (401, 403, 429, ...) fails the run: an environment without
    meters rolls up to nothing, and publishing that would cancel the usage billed for it."""
    from byoc_platform.control_plane.client import ControlPlaneRequestError

    out: dict[str, list[MeterSpec]] = {}
    with control_plane.catalog() as catalog:
        for env in environments:
            try:
                out[env] = fetch_meters(catalog, env)
            except ControlPlaneRequestError as exc:  # e.g. an invalid environment id
                if exc.status not in UNKNOWN_ENVIRONMENT:
                    raise
                log.warning("no catalog for environment %r: %s", env, exc)
                out[env] = []
    return out


def keep_previous_meters(
    meters: dict[str, list[MeterSpec]], previous: RollupRevision | None
) -> dict[str, list[MeterSpec]]:
    """The meters to re-roll an hour with: for every feature the hour's last revision rolled
    up, that revision's meter; the catalog's current meters only for features new to the hour.
    A re-rollup (late events, a backfill) must not rewrite usage already billed: neither after
    a feature was deleted (F36: the control plane refuses usage of an unknown feature, so the
    cancelling deltas would also block the hour's publish) nor after its meter was edited
    (F68: a new event name or field recomputes the whole hour and cancels what was billed)."""
    if previous is None:
        return meters
    out = {}
    for env, specs in meters.items():
        before = {m.feature_id: m for m in previous.meters.get(env, [])}
        new = [m for m in specs if m.feature_id not in before]
        out[env] = sorted(before.values()) + new
    return out


def totals_table(rows: list[tuple[str, str, float, int]]) -> str:
    lines = ["| environment | feature | value | events |", "|---|---|---:|---:|"]
    lines += [f"| {e} | {f} | {v:g} | {n} |" for e, f, v, n in rows[:50]]
    return "\n".join(lines)


@quietly(
    asset,
    partitions_def=HOURLY,
    backfill_policy=HOURS_PER_RUN,
    group_name="rollups",
    deps=[usage_events, usage_reports],
    kinds={"clickhouse"},
    retry_policy=RetryPolicy(max_retries=3, delay=10, backoff=Backoff.EXPONENTIAL),
    description="Usage of each hour per (environment, customer, resource, feature), "
    "from the deduplicated raw events and the catalog's meters, and from the usage reports "
    "(reportUsage). Re-materializing an hour replaces it.",
)
def hourly_usage_rollup(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    control_plane: ControlPlaneResource,
) -> MaterializeResult:
    started = time.monotonic()
    hours: list[RollupRevision] = []
    by_feature: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    environments: set[str] = set()
    unmetered: set[str] = set()
    with warehouse.client() as client:
        db = warehouse.database
        for key in context.partition_keys:
            hour = hour_start(key)
            retired = retired_hours(client, db, hour, hour + timedelta(hours=1))
            if retired:  # never a retry: the same data gives the same refusal
                raise Failure(retired_problem(retired, "roll up"), allow_retries=False)
            present = environments_in(client, db, hour, hour + timedelta(hours=1))
            meters = keep_previous_meters(
                meters_for(control_plane, present), latest_revision(client, db, hour)
            )
            header = rollup_hour(client, db, hour, meters)
            # Report rows apart: an hour's last SET is a level, not to be added to amounts.
            for env, feature, value, events in client.query(
                "SELECT environment, if(event_name = '', feature_id || ' (' || aggregation || ')',"
                f" feature_id) AS f, sum(value), sum(events) FROM {db}.usage_hourly "
                "WHERE hour = {h:DateTime('UTC')} AND revision = {r:UInt64} "
                "GROUP BY environment, f",
                parameters={"h": hour.strftime("%Y-%m-%d %H:%M:%S"), "r": header.revision},
            ).result_rows:
                by_feature[(env, feature)][0] += value
                by_feature[(env, feature)][1] += events
            environments |= set(meters)
            unmetered |= {env for env, ms in meters.items() if not ms}
            hours.append(header)
            context.log.info(
                "rolled up %s: %d rows, %d events, revision %d",
                key,
                header.rows,
                header.events,
                header.revision,
            )
    return MaterializeResult(
        metadata={
            "hours": MetadataValue.json(
                [
                    {
                        "hour": hour_key(h.hour),
                        "revision": h.revision,
                        "rows": h.rows,
                        "events": h.events,
                        "value_total": h.value_total,
                    }
                    for h in hours
                ]
            ),
            "revision": hours[-1].revision,
            "rows": sum(h.rows for h in hours),
            "events": sum(h.events for h in hours),
            "value_total": sum(h.value_total for h in hours),
            "environments": MetadataValue.json(sorted(environments)),
            "environments_without_meters": MetadataValue.json(sorted(unmetered)),
            "totals_by_feature": MetadataValue.md(
                totals_table([(e, f, v, int(n)) for (e, f), (v, n) in sorted(by_feature.items())])
            ),
            "duration_s": round(time.monotonic() - started, 3),
        }
    )
