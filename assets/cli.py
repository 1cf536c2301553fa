"""`byoc archive restore` and `byoc rollup backfill` (added to `byoc` through ``byoc.cli``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from byoc_platform.cli_settings import DataDir, load_settings, running_stack_settings

if TYPE_CHECKING:
    pass

app = typer.Typer()
archive_app = typer.Typer(
    help="The cold tier: encrypted Parquet archives of raw events.", no_args_is_help=True
)
rollup_app = typer.Typer(help="Hourly rollups and their publication.", no_args_is_help=True)
app.add_typer(archive_app, name="archive")
app.add_typer(rollup_app, name="rollup")
console = Console(stderr=True)


def _hour(text: str, option: str) -> datetime:
    from assets.partitions import parse_hour

    try:
        return parse_hour(text)
    except ValueError as exc:
        console.print(f"[red]{option}: {exc}[/red]")
        raise typer.Exit(2) from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@archive_app.command("restore")
def restore(
    hour: Annotated[str, typer.Option("--hour", help="The UTC hour, e.g. 2026-01-01T13.")],
    environment: Annotated[
        str | None, typer.Option("--env", help="Only this environment (default: all archived).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Read an archived hour back (decrypting through KMS) into ClickHouse for re-rollup."""
    from botocore.exceptions import BotoCoreError, ClientError

    from assets.archive.defs import crypto_for
    from assets.archive.hours import ArchiveError
    from assets.archive.restore import plan_restore, restore_manifest
    from assets.resources import ArchiveStoreResource, WarehouseResource

    if environment is not None and not environment.strip():
        raise _fail("--env is empty: name an environment, or leave --env out for all", 2)
    # The S3, KMS and warehouse of the stack in --data-dir (its ports), not the shell's.
    settings = running_stack_settings(load_settings(data_dir, console))
    start = _hour(hour, "--hour")
    local = settings.deployment == "local"
    store = ArchiveStoreResource.for_settings(
        settings,
        credentials="static" if local else "default_chain",
        create_missing_keys=local,
    )
    warehouse = WarehouseResource.for_settings(settings)
    s3 = store.s3()
    label = f"{start:%Y-%m-%dT%H}"
    try:
        plan = plan_restore(s3, store.bucket, start, environment)
        if not plan.manifests:
            raise _fail(f"no archive holds {label}:00 UTC")
        crypto = crypto_for(store)
        restored = []
        with _progress() as progress, warehouse.client() as client:
            task = progress.add_task(f"restoring {label}", total=plan.rows)
            for manifest in plan.manifests:
                restored.append(
                    restore_manifest(
                        client,
                        warehouse.database,
                        s3,
                        store.bucket,
                        crypto,
                        manifest,
                        on_rows=lambda n: progress.advance(task, n),
                    )
                )
    except ArchiveError as exc:
        raise _fail(str(exc)) from exc
    except (BotoCoreError, ClientError) as exc:  # S3 or KMS unreachable, refused, ...
        where = f"S3 {settings.s3.endpoint} / KMS {settings.kms.endpoint}"
        raise _fail(f"{where}: {exc} (is the stack up? `byoc up`)") from exc
    for r in restored:
        console.print(
            f"restored {r.rows} rows of {r.environment} from s3://{store.bucket}/{r.object_key} "
            f"({r.rows_in_warehouse} rows of that hour now in ClickHouse)"
        )
    console.print(f"re-roll up with: byoc rollup backfill --from {label} --to {label}")


@rollup_app.command("backfill")
def backfill(
    start: Annotated[str, typer.Option("--from", help="First UTC hour, e.g. 2026-01-01T00.")],
    end: Annotated[str, typer.Option("--to", help="Last UTC hour (inclusive).")],
    publish: Annotated[
        bool, typer.Option(help="Also publish to the control plane (--no-publish: rollup only).")
    ] = True,
    wait: Annotated[bool, typer.Option(help="Follow it to the end with a progress bar.")] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the end.", min=0.0, max=7 * 86400.0)
    ] = 3600.0,
    data_dir: DataDir = None,
) -> None:
    """Roll up (and publish) a range of hours as a backfill of the running Dagster (`byoc up`)."""
    from assets.backfill_client import BackfillError, BackfillStatus, DagsterBackfills
    from assets.partitions import PARTITIONS_START, hour_key

    settings = load_settings(data_dir, console)
    first, last = _hour(start, "--from"), _hour(end, "--to")
    if last < first:
        raise _fail("--to is before --from", 2)
    # The hourly partitions: from PARTITIONS_START to the last complete hour (Dagster answers
    # anything else with an unhelpful 500).
    earliest = datetime.fromisoformat(f"{PARTITIONS_START}T00:00:00+00:00")
    latest = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    if first < earliest or last > latest:
        raise _fail(
            f"hours must lie between {earliest:%Y-%m-%dT%H} and the last complete hour "
            f"{latest:%Y-%m-%dT%H} (UTC)",
            2,
        )
    keys = [
        hour_key(first + timedelta(hours=i))
        for i in range(int((last - first) / timedelta(hours=1)) + 1)
    ]
    assets = ["hourly_usage_rollup", *(["published_usage"] if publish else [])]
    stack = running_stack_settings(settings)  # the Dagster of the stack in --data-dir
    url = f"http://{stack.host}:{stack.ports.dagster}"
    try:
        with DagsterBackfills(url) as dagster:
            backfill_id = dagster.launch(assets, keys)
            console.print(f"backfill {backfill_id}: {len(keys)} hours, {url}/runs/b/{backfill_id}")
            if not wait:
                return
            with _progress() as progress:
                task = progress.add_task("asset partitions", total=len(keys) * len(assets))

                def show(status: BackfillStatus) -> None:
                    progress.update(task, completed=status.materialized + status.failed)

                final = dagster.wait(backfill_id, timeout, on_status=show)
    except BackfillError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"backfill {backfill_id}: {final.status} ({final.failed} failed)")
    if not final.succeeded:
        raise typer.Exit(1)
