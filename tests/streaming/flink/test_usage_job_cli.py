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


def _options(ddl: str) -> dict[str, str]:
    return dict(re.findall(r"'([\w.-]+)' = '([^']*)'", ddl))


def test_kafka_sink_writes_the_json_of_the_file_sink(job, tmp_path) -> None:
    """ClickHouse's ingestion is tested end to end on the file sink's output
    (test_clickhouse_ingest.py): the Kafka sink must encode rows the same way."""
    args = job.parse_args(["--source", "kafka"])
    for table, columns in job.SINKS.items():
        kafka, files = (
            job.kafka_sink_ddl(table, columns, args),
            job.file_sink_ddl(table, columns, tmp_path),
        )

        def encoding(options: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in options.items() if k == "format" or "json" in k}

        assert encoding(_options(kafka)) == encoding(_options(files)) == {"format": "json"}
        assert kafka.split(") WITH (")[0] == files.split(") WITH (")[0]  # same columns


def test_sink_topics_are_the_topics_clickhouse_reads(job, monkeypatch) -> None:
    """Defaults agree with byoc_platform.settings.FlinkSettings, and the topics the job writes
    are the ones the warehouse migrations' Kafka queues consume, also when the prefix is set."""
    from byoc_platform.settings import FlinkSettings
    from byoc_platform.warehouse_cluster import KafkaIngest

    for name in [n for n in __import__("os").environ if n.startswith("BYOC_")]:
        monkeypatch.delenv(name)
    args = job.parse_args(["--source", "kafka"])
    assert (args.group_id, args.sink_topic_prefix) == (
        FlinkSettings().group_id,
        FlinkSettings().sink_topic_prefix,
    )
    monkeypatch.setenv("BYOC_FLINK__SINK_TOPIC_PREFIX", "rows.v2.")
    args = job.parse_args(["--source", "kafka"])
    ingest = KafkaIngest(bootstrap=args.bootstrap, topic_prefix="rows.v2.")
    for table, columns in job.SINKS.items():
        topic = _options(job.kafka_sink_ddl(table, columns, args))["topic"]
        assert topic == ingest.topic(table)
