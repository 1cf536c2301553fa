"""ClickHouse's ingestion of the Flink job's rows (the job's "sinks for ClickHouse"), end to end
in the real ClickHouse engine (the test warehouse, chdb).

In a cluster the job writes its rows as JSON to Kafka and ClickHouse reads them with Kafka-engine
queue tables and materialized views (byoc_platform.warehouse_cluster). chdb cannot run the Kafka
engine, so here the queues are Null-engine tables with the same columns (plus the engine's
virtual columns as ordinary ones) and the views are the deployed views byte for byte. They are
fed the job's REAL output for the shared fixture: the file sink and the Kafka sink both use
Flink's 'json' format with the same options (one row per line / per message,
test_usage_job_cli.py holds them equal). The tables must then hold exactly what the Python
engine computes, compared by the same functions as test_parity.py. Left out on both sides: the
rows with times before 1970 (the edge partition's negative event times), which the tables'
DateTime columns cannot hold whichever engine wrote them.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from flink_parity import (
    SINK_TABLES,
    assert_events_identical,
    assert_minutes_identical,
    before_1970,
    part_files,
)
from stream_fixtures import final_late_hours

from byoc_platform.warehouse_cluster import (
    ERRORS_TABLE,
    QUEUE_FORMAT_SETTINGS,
    KafkaIngest,
    ingest_statements,
    queue_table,
    view_name,
)
from tests.stack_fixtures import stand_in_ingest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DB = "flink_ingest_e2e"
INGEST = KafkaIngest(bootstrap="127.0.0.1:9")  # never contacted: the queues are Null tables


def _columns(client: Any, table: str) -> list[tuple[str, str]]:
    return [
        (str(n), str(t))
        for n, t in client.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {t:String} ORDER BY position",
            parameters={"db": DB, "t": table},
        ).result_rows
    ]


def _as_engine_rows(client: Any, table: str, final: bool) -> list[dict[str, Any]]:
    """The table's rows with times back in epoch ms, as the Python engine writes them."""
    columns = _columns(client, table)
    exprs = []
    for name, ch_type in columns:
        if ch_type.startswith("DateTime64"):
            exprs.append(f"toUnixTimestamp64Milli(`{name}`)")
        elif ch_type.startswith("DateTime"):
            exprs.append(f"toInt64(toUnixTimestamp(`{name}`)) * 1000")
        else:
            exprs.append(f"`{name}`")
    sql = f"SELECT {', '.join(exprs)} FROM {DB}.{table}{' FINAL' if final else ''}"
    names = [n for n, _ in columns]
    return [dict(zip(names, row, strict=True)) for row in client.query(sql).result_rows]


@pytest.fixture(scope="module")
def warehouse(infra) -> Any:
    with stand_in_ingest(infra.settings, DB) as client:
        yield client


@pytest.fixture(scope="module")
def ingested(warehouse: Any, flink_output: Path) -> dict[str, Any]:
    """Every sink part file inserted as-is (one insert per file, as the engine inserts blocks),
    but for its rows before 1970; then what the tables hold."""
    started_ms = time.time_ns() // 1_000_000
    for table in SINK_TABLES:
        for part in part_files(flink_output / table):
            lines = [line for line in part.read_bytes().split(b"\n") if line]
            block = b"".join(line + b"\n" for line in lines if not before_1970(json.loads(line)))
            warehouse.raw_insert(
                f"{DB}.{queue_table(table)}",
                insert_block=block,
                fmt="JSONEachRow",
                settings=QUEUE_FORMAT_SETTINGS,
            )
    return {
        "started_ms": started_ms,
        "final": {t: _as_engine_rows(warehouse, t, final=True) for t in SINK_TABLES},
        "count": {
            t: warehouse.query(f"SELECT count() FROM {DB}.{t}").result_rows[0][0]
            for t in (*SINK_TABLES, ERRORS_TABLE)
        },
    }


def test_views_are_the_deployed_views_byte_for_byte() -> None:
    deployed = ingest_statements(DB, "byoc", INGEST)
    tested = ingest_statements(DB, None, INGEST, queue_engine="Null")
    assert len(deployed) == len(tested)
    for cluster_sql, local_sql in zip(deployed, tested, strict=True):
        if "MATERIALIZED VIEW" in cluster_sql:
            assert cluster_sql.replace(" ON CLUSTER byoc", "") == local_sql
        else:  # tables: only the ON CLUSTER clause, the engine and the virtual columns differ
            assert "ENGINE = Null" in local_sql or "ENGINE = MergeTree" in local_sql


def storable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not before_1970(r)]


def test_events_reach_usage_events_exactly_as_the_python_engine_writes_them(
    ingested, flink_rows, python_rows
) -> None:
    assert ingested["count"]["usage_events"] == len(storable(flink_rows["usage_events"]))
    assert_events_identical(
        ingested["final"]["usage_events"], storable(python_rows["usage_events"])
    )


def test_usage_minute_final_state_is_the_python_engines(ingested, flink_rows, python_rows) -> None:
    # every row of the job arrived once (its keys are distinct, so merges cannot hide a loss)
    assert ingested["count"]["usage_minute"] == len(storable(flink_rows["usage_minute"]))
    assert_minutes_identical(
        ingested["final"]["usage_minute"], storable(python_rows["usage_minute"])
    )


def test_late_hours_are_the_python_engines_recorded_when_written(ingested, python_rows) -> None:
    """The same (environment, hour) keys; recorded_at is the write time, never earlier than
    the engine's receive time (a row written late must not hide under an older one)."""
    stored = final_late_hours(ingested["final"]["late_hours"])
    engine = final_late_hours(storable(python_rows["late_hours"]))
    assert stored.keys() == engine.keys()
    assert all(at >= max(engine[key], ingested["started_ms"]) for key, at in stored.items())


def test_good_rows_log_no_ingest_error(ingested) -> None:
    assert ingested["count"][ERRORS_TABLE] == 0


def test_views_map_every_column_to_the_tables_type(warehouse) -> None:
    for table in SINK_TABLES:
        view = _columns(warehouse, view_name(table))
        target = _columns(warehouse, table)

        def plain(ch_type: str) -> str:
            return re.sub(r"^LowCardinality\((.*)\)$", r"\1", ch_type)

        assert [(n, plain(t)) for n, t in view] == [(n, plain(t)) for n, t in target], table


def test_a_row_the_engine_could_not_parse_goes_to_the_error_table_only(warehouse, ingested) -> None:
    """kafka_handle_error_mode='stream' hands such a row to the views with _error set; the
    error view keeps where it came from and the hot table never sees it."""
    before = warehouse.query(f"SELECT count() FROM {DB}.usage_events").result_rows[0][0]
    bad = {
        "environment": "",
        "event_time": 0,
        "_topic": "byoc.rows.usage_events",
        "_partition": 3,
        "_offset": 42,
        "_raw_message": '{"environment":"prod","event_time":"soon"',
        "_error": "Cannot parse input: expected '}' before: ''",
    }
    warehouse.raw_insert(
        f"{DB}.{queue_table('usage_events')}",
        insert_block=json.dumps(bad).encode(),
        fmt="JSONEachRow",
        settings=QUEUE_FORMAT_SETTINGS,
    )
    after = warehouse.query(f"SELECT count() FROM {DB}.usage_events").result_rows[0][0]
    assert after == before
    errors = warehouse.query(
        f"SELECT topic, partition, offset, raw_message, error FROM {DB}.{ERRORS_TABLE}"
    ).result_rows
    assert errors == [
        (bad["_topic"], 3, 42, bad["_raw_message"], bad["_error"]),
    ]
    assert ingested["count"][ERRORS_TABLE] == 0  # read before this test's bad row
