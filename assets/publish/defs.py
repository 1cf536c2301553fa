"""The ``published_usage`` asset: the hour's rollup sent to the control plane, exactly once."""

import time

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
from assets.partitions import HOURLY, hour_start
from assets.publish.ledger import plan, read_ledger, record
from assets.publish.sender import send
from assets.quality.reconciliation import reconcile
from assets.resources import ControlPlaneResource, WarehouseResource
from assets.rollups.compute import read_rollup
from assets.rollups.defs import hourly_usage_rollup

# One publish at a time per instance: two concurrent publishes of one hour could both plan
# the same revision with different deltas (see ledger.py). Set this pool's limit to 1.
PUBLISH_POOL = "control_plane_publish"


@asset(
    partitions_def=HOURLY,
    group_name="publish",
    deps=[hourly_usage_rollup],
    kinds={"graphql"},
    pool=PUBLISH_POOL,
    retry_policy=RetryPolicy(max_retries=3, delay=15, backoff=Backoff.EXPONENTIAL),
    description="The hour's rollup reported to the control plane (ReportUsageBulk, DELTA per "
    "idempotency key): a re-run or backfill sends only what changed, so nothing is counted "
    "twice. Refuses an hour that does not reconcile with the raw events.",
)
def published_usage(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    control_plane: ControlPlaneResource,
) -> MaterializeResult:
    hour = hour_start(context.partition_key)
    started = time.monotonic()
    bulk_size = warehouse.settings.control_plane.publish_bulk_size
    with warehouse.client() as client:
        db = warehouse.database
        # The blocking check guards runs that also roll up; this guards runs that only
        # publish (schedules, retries, partial backfills): invariant 3 before invariant 4.
        check = reconcile(client, db, hour)
        if not check.passed:
            raise Failure(
                description=f"{context.partition_key} does not reconcile with the raw events "
                f"({check.reason}); nothing was published. Re-materialize the rollup.",
                metadata={"mismatches": MetadataValue.json(check.mismatches)},
                allow_retries=False,
            )
        rows = read_rollup(client, db, hour, check.revision)
        targets = {r.key: r.value for r in rows if r.aggregation in ADDITIVE}
        skipped = sorted({r.feature_id for r in rows if r.aggregation not in ADDITIVE})
        todo = plan(hour, targets, read_ledger(client, db, hour))
        record(client, db, todo.new, "pending")  # before sending: see ledger.py
        with control_plane.graphql() as graphql:
            result = send(
                graphql,
                todo.to_send,
                bulk_size,
                on_sent=lambda bulk: record(client, db, bulk, "sent"),
            )
        published = read_ledger(client, db, hour)
    sent_total = sum(e.delta for e in published if e.status == "sent")
    metadata = {
        "rollup_revision": check.revision or 0,
        "usages_sent": len(result.sent),
        "new_revisions": len(todo.new),
        "resent_pending": len(todo.resend),
        "unchanged_keys": todo.unchanged,
        "bulks": result.bulks,
        "bulk_size": bulk_size,
        "delta_sent": sum(e.delta for e in result.sent),
        "published_total": sent_total,
        "rollup_total": sum(targets.values()),
        "not_published_non_additive_features": MetadataValue.json(skipped),
        "idempotency_keys": MetadataValue.json([e.idempotency_key for e in result.sent[:20]]),
        "duration_s": round(time.monotonic() - started, 3),
    }
    if result.rejected:
        raise Failure(
            description=f"the control plane refused {len(result.rejected)} usages "
            f"({result.rejected[0][1]}); they stay pending and are retried on the next run",
            metadata={
                **metadata,
                "rejected": MetadataValue.json(
                    [{"key": e.idempotency_key, "error": err} for e, err in result.rejected[:20]]
                ),
            },
            allow_retries=False,  # refusals are permanent until the catalog changes
        )
    context.log.info(
        "published %s: %d usages sent in %d bulks",
        context.partition_key,
        len(result.sent),
        result.bulks,
    )
    return MaterializeResult(metadata=metadata)
