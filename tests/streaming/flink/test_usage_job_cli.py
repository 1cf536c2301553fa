"""The job's command line and its Kafka DDL (the Kafka path itself needs the connector jar of
the cluster image, absent here; these tests run the job module's pure-Python builders)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parents[3] / "streaming" / "flink" / "usage_job.py"


@pytest.fixture(scope="module")
def job():
    # The job lives in its own environment; its module imports PyFlink only when building.
    spec = importlib.util.spec_from_file_location("usage_job", JOB)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_file_source_requires_input_and_output(job, capsys) -> None:
    with pytest.raises(SystemExit):
        job.parse_args(["--source", "file", "--input", "x"])
    assert "--source file needs --input and --output-dir" in capsys.readouterr().err


def test_missing_input_path_is_named(job, tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"no such file or directory: .*nope"):
        job.partition_inputs([tmp_path / "nope"])
    with pytest.raises(SystemExit, match="no partition-"):
        job.partition_inputs([tmp_path])


def test_kafka_settings_come_from_the_platform_environment(job, monkeypatch) -> None:
    monkeypatch.setenv("BYOC_KAFKA__BOOTSTRAP", "kafka-0.kafka:9093")
    monkeypatch.setenv("BYOC_KAFKA__EVENTS_TOPIC", "usage.events.v2")
    monkeypatch.setenv("BYOC_STREAM__DEDUP_WINDOW_S", "3600")
    args = job.parse_args(["--source", "kafka"])
    assert (args.bootstrap, args.topic, args.dedup_window_s) == (
        "kafka-0.kafka:9093",
        "usage.events.v2",
        3600,
    )
    source = job.kafka_source_ddl("src", args)
    for option in (
        "'connector' = 'kafka'",
        "'topic' = 'usage.events.v2'",
        "'properties.isolation.level' = 'read_committed'",
        "'value.format' = 'raw'",
        "pt AS PROCTIME()",
    ):
        assert option in source
    sink = job.kafka_sink_ddl("usage_minute", job.MINUTE_COLUMNS, args)
    assert "'topic' = 'byoc.rows.usage_minute'" in sink
    assert "'sink.delivery-guarantee' = 'exactly-once'" in sink


def test_sink_columns_are_the_warehouse_columns(job) -> None:
    from streaming.engine import EVENT_COLUMNS, LATE_HOUR_COLUMNS, MINUTE_COLUMNS

    def names(columns: str) -> tuple[str, ...]:
        # a column starts after a comma with "name TYPE" (commas inside MAP<..., ...> do not)
        return tuple(re.findall(r"(?:^|,)\s*`?(\w+)`?\s+[A-Z]", columns))

    assert names(job.EVENT_COLUMNS) == EVENT_COLUMNS
    assert names(job.MINUTE_COLUMNS) == MINUTE_COLUMNS
    assert names(job.LATE_HOUR_COLUMNS) == LATE_HOUR_COLUMNS
