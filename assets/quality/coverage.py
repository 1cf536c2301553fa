"""The ``pipeline_coverage`` asset: which recent hours are rolled up, published, archived.

One glance for operators: an hour with events or usage reports but no rollup (the schedule
did not run), a rollup older than the hour's latest late event (the sensor has not caught
up), publishes left pending (the control plane refused or was down), days with events but no
verified archive.
"""

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.partitions import ch_time, floor_hour
from assets.resources import WarehouseResource
from assets.sources import late_hours, usage_events, usage_reports


class CoverageConfig(Config):
    lookback_hours: int = Field(default=48, ge=1, le=24 * 31)


def _by_hour(rows: list[tuple]) -> dict[datetime, tuple]:
    return {r[0].replace(tzinfo=UTC): r[1:] for r in rows}


@asset(
    group_name="quality",
    deps=[usage_events, usage_reports, late_hours],
    kinds={"clickhouse"},
    description="Coverage of the recent hours: events, rollup, publish ledger, archive.",
)
def pipeline_coverage(
    context: AssetExecutionContext, config: CoverageConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    end = floor_hour(datetime.now(UTC))
    start = end - timedelta(hours=config.lookback_hours)
    params = {"start": ch_time(start), "end": ch_time(end)}
    window = "BETWEEN {start:DateTime('UTC')} AND {end:DateTime('UTC')}"
    with warehouse.client() as client:
        db = warehouse.database
        events = _by_hour(
            client.query(
                f"SELECT toStartOfHour(event_time) h, count() FROM {db}.usage_events "
                "WHERE event_time >= {start:DateTime('UTC')} "
                "AND event_time < {end:DateTime('UTC')} "
                "GROUP BY h",
                parameters=params,
            ).result_rows
        )
        reports = _by_hour(
            client.query(
                f"SELECT toStartOfHour(report_time) h, uniqExact(customer_id, report_id) "
                f"FROM {db}.usage_reports WHERE report_time >= {{start:DateTime('UTC')}} "
                "AND report_time < {end:DateTime('UTC')} GROUP BY h",
                parameters=params,
            ).result_rows
        )
        rollups = _by_hour(
            client.query(
                f"SELECT hour, max(created_at) FROM {db}.usage_hourly_revisions "
                f"WHERE hour {window} GROUP BY hour",
                parameters=params,
            ).result_rows
        )
        late = _by_hour(
            client.query(
                f"SELECT hour, max(recorded_at) FROM {db}.late_hours WHERE hour {window} "
                "GROUP BY hour",
                parameters=params,
            ).result_rows
        )
        ledger = _by_hour(
            client.query(
                f"SELECT hour, countIf(status = 'sent'), countIf(status != 'sent') "
                f"FROM {db}.usage_published FINAL WHERE hour {window} GROUP BY hour",
                parameters=params,
            ).result_rows
        )
        archived = _by_hour(
            client.query(
                f"SELECT hour, count() FROM {db}.archive_manifests FINAL "
                f"WHERE hour {window} AND status = 'verified' GROUP BY hour",
                parameters=params,
            ).result_rows
        )
    counts: dict[str, int] = defaultdict(int)
    lines = [
        "| hour | events | reports | rolled up | late since | sent / pending | archived |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for hour in sorted(events.keys() | reports.keys(), reverse=True):
        rolled = rollups.get(hour)
        late_at = late.get(hour)
        stale = bool(rolled and late_at and late_at[0] > rolled[0])
        sent, pending = ledger.get(hour, (0, 0))
        counts["hours_with_events"] += hour in events
        counts["hours_with_reports"] += hour in reports
        counts["hours_not_rolled_up"] += rolled is None
        counts["hours_stale_after_late_events"] += stale
        counts["hours_with_pending_publish"] += pending > 0
        counts["hours_archived"] += hour in archived
        lines.append(
            f"| {hour:%Y-%m-%d %H}:00 | {events.get(hour, (0,))[0]} | "
            f"{reports.get(hour, (0,))[0]} | {'yes' if rolled else 'NO'} | "
            f"{'STALE' if stale else '-'} | {sent} / {pending} | "
            f"{'yes' if hour in archived else '-'} |"
        )
    context.log.info("coverage: %s", dict(counts))
    return MaterializeResult(
        metadata={
            **{k: int(v) for k, v in counts.items()},
            "window": f"{start:%Y-%m-%dT%H} .. {end:%Y-%m-%dT%H}",
            "hours": MetadataValue.md("\n".join(lines[: 2 + 200])),
        }
    )
