"""The cluster migrations: replicated tables with the local tables' columns, the Kafka ingestion of
the Flink job's rows and of the usage reports, validated in the real ClickHouse engine as far as
one node can take them (no Keeper, no Kafka here), and chosen by settings. The views' end-to-end
behaviour on the job's real rows is tests/streaming/flink/test_clickhouse_ingest.py, on real
usage.reports records tests/byoc_platform/test_reports_ingest.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from byoc_platform import clients
from byoc_platform.settings import Settings
from byoc_platform.warehouse_cluster import (
    HOT_TABLES,
    REPLICA_NAME,
    REPLICA_PATH,
    REPORT_COLUMNS,
    REPORT_RECORD,
    REPORTS_TABLE,
    ROW_TABLES,
    VIRTUAL_COLUMNS,
    WIRE_COLUMNS,
    KafkaIngest,
    apply_settings_migrations,
    cluster_migrations,
    ingest_statements,
    migrations_for,
    queue_table,
    replication_problems,
    table_engines,
    to_replicated,
)
from byoc_platform.warehouse_schema import USAGE_REPORTS_COLUMNS, migrations
from streaming.engine import EVENT_COLUMNS, LATE_HOUR_COLUMNS, MINUTE_COLUMNS

CLUSTER = "byoc"
INGEST = KafkaIngest(bootstrap="kafka-0.kafka:9092", topic_prefix="byoc.rows.")


def _deployed(db: str = "byoc") -> list[str]:
    return cluster_migrations(db, CLUSTER) + ingest_statements(db, CLUSTER, INGEST)


def _body(statement: str) -> str:
    """The column list of a CREATE TABLE statement."""
    return statement.split(" (", 1)[1].split("ENGINE")[0]


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in [n for n in __import__("os").environ if n.startswith("BYOC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# ----------------------------------------------------------------------- statements
def test_replicated_tables_keep_the_local_columns_keys_and_partitioning() -> None:
    for local, replicated in zip(migrations("db"), cluster_migrations("db", CLUSTER), strict=True):
        assert replicated.count(f" ON CLUSTER {CLUSTER}") == 1
        if local.lstrip().startswith("CREATE DATABASE"):
            continue
        assert _body(replicated) == _body(local)
        local_engine = re.search(r"ENGINE = (\w+)(?:\((\w*)\))?", local)
        assert local_engine
        name, args = local_engine.groups()
        prefix = f"ENGINE = Replicated{name}('{REPLICA_PATH}', '{REPLICA_NAME}'"
        assert prefix + (f", {args})" if args else ")") in replicated
        rest = lambda s: s.split("ENGINE", 1)[1].split("\n", 1)[1]  # noqa: E731
        assert rest(replicated) == rest(local).replace(
            "non_replicated_deduplication_window", "replicated_deduplication_window"
        )


def test_to_replicated_refuses_what_it_cannot_translate() -> None:
    with pytest.raises(ValueError, match="not a CREATE DATABASE/TABLE IF NOT EXISTS"):
        to_replicated("ALTER TABLE db.t DROP PARTITION 1", CLUSTER)
    with pytest.raises(ValueError, match="already replicated"):
        to_replicated("CREATE TABLE IF NOT EXISTS db.t (a UInt8) ENGINE = ReplicatedMergeTree", "c")
    with pytest.raises(ValueError, match="expected one \\*MergeTree engine"):
        to_replicated("CREATE TABLE IF NOT EXISTS db.t (a UInt8) ENGINE = Memory", CLUSTER)
    with pytest.raises(ValueError, match="cluster must be a plain identifier"):
        cluster_migrations("byoc", "byoc; DROP DATABASE byoc")
    with pytest.raises(ValueError, match="database must be a plain identifier"):
        ingest_statements("by-oc", CLUSTER, INGEST)


def test_queue_columns_are_the_flink_sink_columns_and_the_table_columns() -> None:
    """The wire (the job's JSON fields), the queue tables and the hot tables name the same
    columns in the same order; test_usage_job_cli.py ties the job's sinks to the same tuples."""
    expected = {
        "usage_events": EVENT_COLUMNS,
        "usage_minute": MINUTE_COLUMNS,
        "late_hours": LATE_HOUR_COLUMNS,
    }
    assert tuple(WIRE_COLUMNS) == ROW_TABLES
    for table, columns in WIRE_COLUMNS.items():
        assert tuple(c.name for c in columns) == expected[table]
    # the reports' view fills every column of usage_reports, in the table's order
    assert tuple(name for name, _ in REPORT_COLUMNS) == USAGE_REPORTS_COLUMNS


def test_hot_tables_are_every_table_of_the_schema() -> None:
    """What the replication check requires on every replica: the Flink rows' tables and
    usage_reports (which the rollup reads whichever engine fills it)."""
    created = [
        s.split("CREATE TABLE IF NOT EXISTS db.", 1)[1].split()[0]
        for s in migrations("db")
        if "CREATE TABLE" in s
    ]
    assert HOT_TABLES == (*ROW_TABLES, REPORTS_TABLE) == tuple(created)


def test_queues_read_the_job_topics_with_error_streaming_and_exact_floats() -> None:
    statements = ingest_statements("byoc", CLUSTER, INGEST)
    for table in ROW_TABLES:
        queue = next(s for s in statements if f"byoc.{queue_table(table)} ON CLUSTER" in s)
        for setting in (
            "ENGINE = Kafka",
            "kafka_broker_list = 'kafka-0.kafka:9092'",
            f"kafka_topic_list = 'byoc.rows.{table}'",
            f"kafka_group_name = 'byoc-clickhouse-rows.{table}'",
            "kafka_format = 'JSONEachRow'",
            "kafka_handle_error_mode = 'stream'",
            "precise_float_parsing = 1",
        ):
            assert setting in queue, (table, setting)
        # the view filling the table is created before the error view (consumption starts
        # with the first view attached): a good row never passes with only the error view
        names = [s.split("VIEW IF NOT EXISTS ", 1)[1].split()[0] for s in statements if "VIEW" in s]
        assert names.index(f"byoc.rows_mv_{table}") < names.index(f"byoc.rows_errors_mv_{table}")


def test_the_reports_queue_reads_whole_records_of_the_reports_topic() -> None:
    statements = ingest_statements("byoc", CLUSTER, INGEST)
    queue = next(s for s in statements if f"byoc.{queue_table(REPORTS_TABLE)} ON CLUSTER" in s)
    assert f"`{REPORT_RECORD}` String\n" in queue  # its one column: the record's text
    for setting in (
        "ENGINE = Kafka",
        "kafka_broker_list = 'kafka-0.kafka:9092'",
        "kafka_topic_list = 'usage.reports'",  # not under the Flink rows' prefix
        "kafka_group_name = 'byoc-clickhouse-rows.usage_reports'",
        "kafka_format = 'JSONAsString'",
        "kafka_handle_error_mode = 'stream'",
    ):
        assert setting in queue, setting
    # The late-hours view reads usage_reports' inserts, so it exists before the queue has a
    # view (which starts consumption); the error view comes last, as for the rows.
    names = [s.split("VIEW IF NOT EXISTS ", 1)[1].split()[0] for s in statements if "VIEW" in s]
    assert names[-3:] == [
        "byoc.rows_late_hours_mv_usage_reports",
        "byoc.rows_mv_usage_reports",
        "byoc.rows_errors_mv_usage_reports",
    ]
    late = next(s for s in statements if "rows_late_hours_mv_usage_reports" in s)
    assert "TO byoc.late_hours AS" in late and "FROM byoc.usage_reports AS r" in late


def test_every_statement_is_idempotent() -> None:
    for statement in _deployed():
        assert "IF NOT EXISTS" in statement.split("(", 1)[0].split(" AS", 1)[0]


def test_every_cluster_statement_parses_in_clickhouse(infra) -> None:
    """formatQuery parses with the real engine's parser (ON CLUSTER included); the replicated
    tables format to the single-node tables apart from the engine clause and ON CLUSTER."""
    client = clients.clickhouse(infra.settings)
    try:

        def formatted(sql: str) -> str:
            # A literal, not a bound parameter: clickhouse-connect sends a bound value over 4 KB
            # as a multipart form, which the test warehouse's HTTP front does not read.
            literal = "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"
            return client.query(f"SELECT formatQuery({literal})").result_rows[0][0]

        for statement in _deployed():
            assert formatted(statement).startswith("CREATE ")
        for local, replicated in zip(
            migrations("byoc"), cluster_migrations("byoc", CLUSTER), strict=True
        ):
            engine_line = re.compile(r"^ENGINE = .*$", re.M)
            norm_cluster = engine_line.sub("", formatted(replicated)).replace(
                " ON CLUSTER byoc", ""
            )
            norm_local = engine_line.sub("", formatted(local)).replace(
                "non_replicated_deduplication_window", "replicated_deduplication_window"
            )
            assert norm_cluster == norm_local
    finally:
        client.close()


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    """tests/byoc_platform/warehouse_cluster_probe.py in its own process and chdb directory."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.byoc_platform.warehouse_cluster_probe", "byoc", CLUSTER],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_replicated_tables_pass_every_engine_check_before_keeper(probe) -> None:
    """Engine arguments, macros, version column and table settings are all accepted: the one
    error left is the missing Keeper (NO_ZOOKEEPER, code 225)."""
    outcomes = {o["statement"]: o for o in probe["outcomes"]}
    for statement in cluster_migrations("byoc", CLUSTER)[1:]:
        assert outcomes[statement]["code"] == 225, outcomes[statement]["message"]
    assert outcomes[cluster_migrations("byoc", CLUSTER)[0]]["code"] is None  # the database


def test_kafka_queues_and_views_are_accepted_by_the_engine(probe) -> None:
    """The queue tables are created (every Kafka setting name and value accepted; only the
    consumers cannot start in chdb: "Shutdown was called"), and every view resolves its
    columns, virtual ones included, against the real Kafka-engine tables."""
    for outcome in probe["outcomes"]:
        statement = outcome["statement"]
        if "ENGINE = Kafka" in statement:
            assert outcome["code"] in (None, 49), outcome["message"]
            assert outcome["code"] is None or "Shutdown was called" in outcome["message"]
        elif "MATERIALIZED VIEW" in statement:
            assert outcome["code"] is None, outcome["message"]
    tables = probe["tables"]
    for table in HOT_TABLES:
        assert tables[queue_table(table)] == "Kafka"
        assert tables[f"rows_mv_{table}"] == tables[f"rows_errors_mv_{table}"] == "MaterializedView"
    assert tables["rows_late_hours_mv_usage_reports"] == "MaterializedView"


def test_stand_in_virtual_columns_have_the_kafka_engines_types(probe) -> None:
    """The Null-engine queues of the end-to-end test declare the virtual columns the views read
    with exactly the types the Kafka engine gives them."""
    for table, columns in probe["queues"].items():
        described = dict(columns)
        for name, ch_type in VIRTUAL_COLUMNS:
            assert described[name] == ch_type, (table, name)
        if table == REPORTS_TABLE:
            wire = [(REPORT_RECORD, "String")]
        else:
            wire = [(c.name, c.wire_type) for c in WIRE_COLUMNS[table]]
        assert columns[: len(wire)] == [list(w) for w in wire]
    assert set(probe["queues"]) == set(HOT_TABLES)


# ----------------------------------------------------------------------- settings switch
def test_settings_choose_single_node_replicated_and_flink_ingest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert migrations_for(_settings(monkeypatch)) == migrations("byoc")
    clustered = _settings(monkeypatch, BYOC_CLICKHOUSE__CLUSTER="byoc")
    assert migrations_for(clustered) == cluster_migrations("byoc", "byoc")
    flink = _settings(
        monkeypatch,
        BYOC_CLICKHOUSE__CLUSTER="byoc",
        BYOC_STREAM__ENGINE="flink",
        BYOC_KAFKA__BOOTSTRAP="kafka.byoc.svc:9092",
        BYOC_FLINK__SINK_TOPIC_PREFIX="rows.v2.",
        BYOC_KAFKA__REPORTS_TOPIC="reports.v2",
    )
    statements = migrations_for(flink)
    tables = cluster_migrations("byoc", "byoc")
    assert [s for s in tables if f"byoc.{REPORTS_TABLE} ON CLUSTER" in s]  # in every cluster
    assert statements[: len(tables)] == tables
    assert statements[len(tables) :] == ingest_statements(
        "byoc",
        "byoc",
        KafkaIngest("kafka.byoc.svc:9092", topic_prefix="rows.v2.", reports_topic="reports.v2"),
    )
    assert "kafka_topic_list = 'rows.v2.usage_minute'" in "".join(statements)
    assert "kafka_topic_list = 'reports.v2'" in "".join(statements)
    # the embedded engine writes the tables itself: no queue reads the topics then
    assert not [s for s in migrations_for(clustered) if "Kafka" in s]


def test_an_unknown_stream_engine_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=r"stream\.engine"):
        _settings(monkeypatch, BYOC_STREAM__ENGINE="spark")


def test_single_node_settings_apply_the_local_schema_idempotently(
    infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, BYOC_CLICKHOUSE__DATABASE="cluster_switch_local")
    client = clients.clickhouse(infra.settings)
    try:
        client.command("DROP DATABASE IF EXISTS cluster_switch_local")
        assert apply_settings_migrations(client, settings) == len(migrations("x"))
        assert apply_settings_migrations(client, settings) == len(migrations("x"))
        rows = table_engines(client, "cluster_switch_local", "system.tables")
        assert {(t, e) for _, t, e in rows} == {(t, "ReplacingMergeTree") for t in HOT_TABLES}
        # what the cluster check says about such tables, from the server's own answer
        problems = replication_problems(rows, 1, HOT_TABLES)
        assert len(problems) == 4
        assert "usage_reports is ReplacingMergeTree, not replicated" in problems[-1]
        assert all("is ReplacingMergeTree, not replicated" in p for p in problems)
    finally:
        client.command("DROP DATABASE IF EXISTS cluster_switch_local")
        client.close()


# ----------------------------------------------------------------------- replication check
def test_replication_problems_name_missing_and_unreplicated_tables() -> None:
    good = [(h, t, "ReplicatedReplacingMergeTree") for h in ("r0", "r1", "r2") for t in HOT_TABLES]
    assert replication_problems(good, 3, HOT_TABLES) == []
    two_hosts = good[: 2 * len(HOT_TABLES)]
    assert replication_problems(two_hosts, 3, HOT_TABLES) == ["tables found on 2 of 3 replicas"]
    mixed = [r for r in good if r[:2] not in {("r1", "late_hours"), ("r2", "usage_reports")}]
    mixed[0] = ("r0", "usage_events", "ReplacingMergeTree")
    assert replication_problems(mixed, 3, HOT_TABLES) == [
        "r0: usage_events is ReplacingMergeTree, not replicated",
        "r1: late_hours is missing",
        "r2: usage_reports is missing",
    ]


def test_stack_bootstrap_applies_what_the_settings_call_for(infra) -> None:
    """`byoc up` and `byoc stream` prepare the schema through ensure_warehouse_schema: local
    tables by default, the ON CLUSTER statements once a cluster is configured (refused here:
    the test warehouse has no cluster, which proves they were sent)."""
    from byoc_platform.stack.bootstrap import ensure_warehouse_schema

    settings = infra.settings.model_copy(deep=True)
    settings.clickhouse.database = "bootstrap_switch"
    client = clients.clickhouse(infra.settings)
    try:
        client.command("DROP DATABASE IF EXISTS bootstrap_switch")
        ensure_warehouse_schema(settings)
        rows = table_engines(client, "bootstrap_switch", "system.tables")
        assert {t for _, t, _ in rows} == set(HOT_TABLES)
        settings.clickhouse.cluster = "byoc"
        with pytest.raises(Exception, match="Requested cluster 'byoc' not found"):
            ensure_warehouse_schema(settings)
    finally:
        client.command("DROP DATABASE IF EXISTS bootstrap_switch")
        client.close()
