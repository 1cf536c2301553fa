"""`byoc warehouse migrate`: the warehouse schema this deployment's settings call for.

Locally the stack bootstrap (and `byoc stream`) apply it; in a cluster the migration Job of
deploy/k8s/base/clickhouse runs this command, so the schema exists even where no Python
stream processor runs (stream processing on Flink). Added to `byoc` through ``byoc.cli``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from byoc_platform.cli_settings import DataDir, load_settings

if TYPE_CHECKING:
    from byoc_platform.settings import Settings

log = logging.getLogger("byoc.warehouse")

app = typer.Typer()
warehouse_app = typer.Typer(help="The ClickHouse warehouse schema.", no_args_is_help=True)
app.add_typer(warehouse_app, name="warehouse")
console = Console(stderr=True, soft_wrap=True)  # Job logs: one line per message


def _connect(settings: Settings, wait_s: float):  # -> clickhouse_connect Client
    """A client once ClickHouse answers; the Job may start before the installation is ready."""
    from byoc_platform import clients

    deadline = time.monotonic() + wait_s
    while True:
        try:
            client = clients.clickhouse(settings)
            client.command("SELECT 1")
            return client
        except Exception as exc:
            if time.monotonic() >= deadline:
                console.print(
                    f"[red]ClickHouse at {settings.clickhouse.url} not reachable after "
                    f"{wait_s:g} s:[/red] {exc}"
                )
                raise typer.Exit(1) from exc
            log.warning("waiting for ClickHouse at %s: %s", settings.clickhouse.url, exc)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


@warehouse_app.command("migrate")
def migrate(
    data_dir: DataDir = None,
    wait_s: Annotated[
        float, typer.Option("--wait-s", help="Seconds to wait for ClickHouse to answer.")
    ] = 60.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the statements, run nothing.")
    ] = False,
) -> None:
    """Create the warehouse schema this deployment needs (idempotent).

    The hot tables (replicated ON CLUSTER when clickhouse.cluster is set) and, when
    stream.engine is flink, the Kafka ingestion of the Flink job's rows and of the usage
    reports. In a cluster, then check that every replica holds replicated tables.
    """
    from byoc_platform.warehouse_cluster import SchemaError, check_replicated, migrations_for

    settings = load_settings(data_dir, console)
    statements = migrations_for(settings)
    if dry_run:
        typer.echo(";\n".join(s.strip() for s in statements) + ";")
        return
    client = _connect(settings, wait_s)
    try:
        for n, statement in enumerate(statements, 1):
            head = statement.strip().splitlines()[0].rstrip(" (")
            try:
                client.command(statement)
            except Exception as exc:
                console.print(f"[red]statement {n}/{len(statements)} failed[/red] ({head}): {exc}")
                raise typer.Exit(1) from exc
            log.info("applied %d/%d: %s", n, len(statements), head)
        if settings.clickhouse.cluster:
            try:
                check_replicated(client, settings.clickhouse.database, settings.clickhouse.cluster)
            except SchemaError as exc:
                console.print(
                    f"[red]schema check failed:[/red] {exc} (deploy/README.md, "
                    '"ClickHouse tables in a cluster")'
                )
                raise typer.Exit(1) from exc
    finally:
        client.close()
    console.print(
        f"warehouse schema ready: {len(statements)} statements, database "
        f"{settings.clickhouse.database}, cluster {settings.clickhouse.cluster or '-'}, "
        f"stream engine {settings.stream.engine}"
    )
