"""The ``published_usage`` asset: the hour's rollup sent to the control plane, exactly once."""

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dagster import (
    AssetExecutionContext,
    Backoff,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from assets.meters import ADDITIVE
from assets.partitions import HOURLY, HOURS_PER_RUN, hour_key, hour_start, quietly
from assets.publish.ledger import Entry, Key, plan, read_ledger, record
from assets.publish.levels import TABLE as LEVELS_TABLE
from assets.publish.levels import later_deltas, plan_levels, read_levels, superseded
from assets.publish.sender import send
from assets.quality.reconciliation import reconcile
from assets.resources import ControlPlaneResource, WarehouseResource
from assets.rollups.compute import REPORTED_DELTA, REPORTED_SET, latest_revision, read_rollup
from assets.rollups.defs import hourly_usage_rollup

# One publish at a time per instance: two concurrent publishes of one hour could both plan
# the same revision with different deltas (see ledger.py). Set this pool's limit to 1.
PUBLISH_POOL = "control_plane_publish"

# Rollup rows published as DELTAs: additive meters and reported DELTAs. An hour's MAX or
# UNIQUE is a level, not an amount: summing hours of it would bill the sum of levels; the last
# reported SET is a level too, sent as SET (levels.py).
PUBLISHED = ADDITIVE | {REPORTED_DELTA}


@dataclass
class HourPublished:
    hour: str
    revision: int
    sent: list[Entry]
    new: int
    resent: int
    unchanged: int
    bulks: int
    rejected: list[tuple[Entry, str]]
    levels_sent: int
    levels_superseded: int
    published_total: float
    rollup_total: float
    skipped: list[str]


class StaleRollup(Exception):
    """The revision to publish is no longer the hour's latest (or no longer has all its rows)."""


def publish_hour(
    client: Any, db: str, graphql: Any, hour: datetime, revision: int, bulk_size: int
) -> HourPublished:
    """Bring the control plane's total of every key of ``hour`` to the rollup (see ledger.py)."""
    rows = read_rollup(client, db, hour, revision)
    # A concurrent rollup of the hour may have replaced the revision since this run checked
    # it, and deleted its rows: publishing what is left would cancel the hour's billed usage.
    # Rows read in full (the header's count) while the revision is still the latest are safe.
    latest = latest_revision(client, db, hour)
    now_revision, now_rows = (latest.revision, latest.rows) if latest else (0, 0)
    if now_revision != revision or now_rows != len(rows):
        raise StaleRollup(
            f"{hour_key(hour)}: rollup revision {revision} was replaced by revision "
            f"{now_revision} ({len(rows)} of its rows left, the latest has {now_rows})"
        )
    # First the hour's SET levels, in their own ledger (levels.py): a DELTA sent before the
    # level would be wiped by it (SET 10 then DELTA +5 is 15, as the counters applied them).
    levels = {r.key: r.value for r in rows if r.aggregation == REPORTED_SET}
    later = superseded(client, db, hour, sorted(levels))
    for key, published in later_deltas(client, db, hour, sorted(levels)).items():
        levels[key] += published  # set after them, the level must not wipe them
    level_todo = plan_levels(hour, levels, read_levels(client, db, hour), later)
    record(client, db, level_todo.replaced, "replaced", table=LEVELS_TABLE)
    record(client, db, level_todo.new, "pending", table=LEVELS_TABLE)
    level_result = send(
        graphql,
        level_todo.to_send,
        bulk_size,
        on_sent=lambda bulk: record(client, db, bulk, "sent", table=LEVELS_TABLE),
    )
    # Then the DELTAs. A feature may have a meter row and a REPORTED_DELTA row: the control
    # plane gets their sum.
    targets: dict[Key, float] = defaultdict(float)
    for r in rows:
        if r.aggregation in PUBLISHED:
            targets[r.key] += r.value
    todo = plan(hour, targets, read_ledger(client, db, hour))
    record(client, db, todo.new, "pending")  # before sending: see ledger.py
    result = send(
        graphql, todo.to_send, bulk_size, on_sent=lambda bulk: record(client, db, bulk, "sent")
    )
    published = read_ledger(client, db, hour)
    return HourPublished(
        hour=hour_key(hour),
        revision=revision,
        sent=result.sent + level_result.sent,
        new=len(todo.new) + len(level_todo.new),
        resent=len(todo.resend) + len(level_todo.resend),
        unchanged=todo.unchanged + level_todo.unchanged,
        bulks=result.bulks + level_result.bulks,
        rejected=result.rejected + level_result.rejected,
        levels_sent=len(level_result.sent),
        levels_superseded=level_todo.superseded,
        published_total=sum(e.delta for e in published if e.status == "sent"),
        rollup_total=sum(targets.values()),
        skipped=sorted(
            {r.feature_id for r in rows if r.aggregation not in PUBLISHED | {REPORTED_SET}}
        ),
    )


@quietly(
    asset,
    partitions_def=HOURLY,
    backfill_policy=HOURS_PER_RUN,
    group_name="publish",
    deps=[hourly_usage_rollup],
    kinds={"graphql"},
    pool=PUBLISH_POOL,
    retry_policy=RetryPolicy(max_retries=3, delay=15, backoff=Backoff.EXPONENTIAL),
    description="The hour's rollup reported to the control plane (ReportUsageBulk, DELTA per "
    "idempotency key; reported SET levels as SET): a re-run or backfill sends only what "
    "changed, so nothing is counted twice. Refuses hours that do not reconcile with the raw "
    "events and reports.",
)
def published_usage(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    control_plane: ControlPlaneResource,
) -> MaterializeResult:
    started = time.monotonic()
    bulk_size = warehouse.settings.control_plane.publish_bulk_size
    hours = [hour_start(key) for key in context.partition_keys]
    with warehouse.client() as client:
        db = warehouse.database
        # The blocking check guards runs that also roll up; this guards runs that only
        # publish (retries, partial re-runs): invariant 3 before invariant 4. Every hour of
        # the run must reconcile before anything is sent.
        checks = [reconcile(client, db, hour) for hour in hours]
        failing = [c for c in checks if not c.passed]
        if failing:
            raise Failure(
                description=f"{len(failing)} of {len(hours)} hours do not reconcile with the raw "
                f"events ({failing[0].hour:%Y-%m-%dT%H}: {failing[0].reason}); nothing was "
                "published. Re-materialize their rollup.",
                metadata={
                    "hours": MetadataValue.json([hour_key(c.hour) for c in failing]),
                    "mismatches": MetadataValue.json(failing[0].mismatches),
                },
                allow_retries=False,
            )
        done: list[HourPublished] = []
        stale: list[str] = []
        with control_plane.graphql() as graphql:
            for c in checks:
                try:
                    done.append(
                        publish_hour(client, db, graphql, c.hour, c.revision or 0, bulk_size)
                    )
                except StaleRollup as exc:  # the other hours are still published
                    stale.append(str(exc))
    sent = [e for h in done for e in h.sent]
    rejected = [r for h in done for r in h.rejected]
    metadata = {
        "hours": MetadataValue.json(
            [
                {
                    "hour": h.hour,
                    "rollup_revision": h.revision,
                    "usages_sent": len(h.sent),
                    "published_total": h.published_total,
                    "rollup_total": h.rollup_total,
                }
                for h in done
            ]
        ),
        "usages_sent": len(sent),
        "new_revisions": sum(h.new for h in done),
        "resent_pending": sum(h.resent for h in done),
        "unchanged_keys": sum(h.unchanged for h in done),
        "bulks": sum(h.bulks for h in done),
        "bulk_size": bulk_size,
        "delta_sent": sum(e.delta for e in sent if e.behavior == "DELTA"),
        "levels_sent": sum(h.levels_sent for h in done),
        "levels_superseded_by_later_hours": sum(h.levels_superseded for h in done),
        "published_total": sum(h.published_total for h in done),
        "rollup_total": sum(h.rollup_total for h in done),
        "not_published_non_additive_features": MetadataValue.json(
            sorted({f for h in done for f in h.skipped})
        ),
        "idempotency_keys": MetadataValue.json([e.idempotency_key for e in sent[:20]]),
        "duration_s": round(time.monotonic() - started, 3),
    }
    if stale:
        raise Failure(
            description=f"{len(stale)} of {len(hours)} hours were rolled up again while this "
            f"run published them ({stale[0]}); nothing of them was published, a retry "
            "publishes their latest revision",
            metadata={**metadata, "stale_hours": MetadataValue.json(stale)},
            allow_retries=True,
        )
    if rejected:
        raise Failure(
            description=f"the control plane refused {len(rejected)} usages "
            f"({rejected[0][1]}); they stay pending: the unfinished_hours sensor retries the "
            "hour (e.g. once the catalog has the customer or feature)",
            metadata={
                **metadata,
                "rejected": MetadataValue.json(
                    [{"key": e.idempotency_key, "error": err} for e, err in rejected[:20]]
                ),
            },
            allow_retries=False,  # refusals are permanent until the catalog changes
        )
    context.log.info("published %d hours: %d usages sent", len(done), len(sent))
    return MaterializeResult(metadata=metadata)
