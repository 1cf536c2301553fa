"""`byoc warehouse migrate` as the cluster's migration Job runs it: a real process, settings from
BYOC_* variables, the test warehouse (chdb behind the ClickHouse HTTP interface)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from byoc_platform import clients
from byoc_platform.warehouse_cluster import HOT_TABLES, table_engines

BYOC = [sys.executable, "-m", "byoc_platform", "warehouse", "migrate"]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    return subprocess.run(
        [*BYOC, *args], env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def _warehouse_env(infra, database: str) -> dict[str, str]:
    assert infra.settings.clickhouse.url
    return {
        "BYOC_CLICKHOUSE__URL": infra.settings.clickhouse.url,
        "BYOC_CLICKHOUSE__DATABASE": database,
    }


def test_dry_run_prints_the_cluster_statements_without_connecting() -> None:
    result = _run(
        {
            "BYOC_CLICKHOUSE__URL": "http://127.0.0.1:1",  # nothing listens: never contacted
            "BYOC_CLICKHOUSE__CLUSTER": "byoc",
            "BYOC_STREAM__ENGINE": "flink",
        },
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("CREATE DATABASE IF NOT EXISTS byoc ON CLUSTER byoc;")
    assert out.count("ENGINE = ReplicatedReplacingMergeTree(") == 4
    assert out.count("ENGINE = Kafka") == 4
    assert "kafka_topic_list = 'byoc.rows.late_hours'" in out
    assert "kafka_topic_list = 'usage.reports'" in out
    assert "CREATE TABLE IF NOT EXISTS byoc.usage_reports ON CLUSTER byoc" in out


def test_migrate_creates_the_single_node_schema_and_is_repeatable(infra) -> None:
    env = _warehouse_env(infra, "cli_migrate_local")
    client = clients.clickhouse(infra.settings)
    try:
        client.command("DROP DATABASE IF EXISTS cli_migrate_local")
        for _ in range(2):
            result = _run(env, "--wait-s", "10")
            assert result.returncode == 0, result.stderr
            assert "warehouse schema ready: 5 statements" in result.stderr
        tables = {t for _, t, _ in table_engines(client, "cli_migrate_local", "system.tables")}
        assert tables == set(HOT_TABLES)
    finally:
        client.command("DROP DATABASE IF EXISTS cli_migrate_local")
        client.close()


def test_a_statement_the_server_refuses_fails_the_job_naming_it(infra) -> None:
    """The test warehouse has no cluster: ON CLUSTER is refused, and the Job must fail."""
    env = {**_warehouse_env(infra, "cli_migrate_cluster"), "BYOC_CLICKHOUSE__CLUSTER": "byoc"}
    result = _run(env, "--wait-s", "10")
    assert result.returncode == 1
    assert (
        "statement 1/5 failed (CREATE DATABASE IF NOT EXISTS cli_migrate_cluster ON CLUSTER byoc)"
        in result.stderr
    )
    assert "Requested cluster 'byoc' not found" in result.stderr


def test_an_unreachable_warehouse_fails_after_the_wait() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = _run({"BYOC_CLICKHOUSE__URL": f"http://127.0.0.1:{port}"}, "--wait-s", "0.5")
    assert result.returncode == 1
    assert f"ClickHouse at http://127.0.0.1:{port} not reachable after 0.5 s" in result.stderr


def test_invalid_settings_are_named() -> None:
    result = _run({"BYOC_STREAM__ENGINE": "spark"}, "--dry-run")
    assert result.returncode == 2
    assert "stream.engine" in result.stderr
