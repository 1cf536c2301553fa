"""The Flink SQL job: the stream processor's semantics (DESIGN.md section 6) in Flink SQL.

Runs in its OWN environment (streaming/flink/.venv, see requirements.txt), never the main one,
so it imports nothing from byoc_platform: only PyFlink and the standard library.

    # locally, on a MiniCluster: one NDJSON file per Kafka partition, one EventBatch per line
    python usage_job.py --source file --input DIR_OR_FILE... --output-dir OUT
    # in a cluster (FlinkDeployment): Kafka in, Kafka out (see "Sinks" below)
    python usage_job.py --source kafka [--bootstrap ... --topic ...]

Pipeline, per source (every operator is Java; no Python on the data path):
1. source: Kafka record values / file lines as raw text (EventBatch JSON, byoc_platform.events).
2. flatten: the events array is split in SQL (REGEXP_EXTRACT_ALL + CROSS JOIN UNNEST) into the
   events' ORIGINAL JSON texts, so the dimensions text is the producer's own bytes (re-encoding
   through Jackson would print 1.0E7 where Python prints 10000000.0). Rows missing a required
   field (REQUIRED_COLUMNS; only records that are not EventBatches have them) are dropped.
3. dedup: ROW_NUMBER() OVER (PARTITION BY environment, customer, key ORDER BY PROCTIME()) = 1,
   first row wins, state TTL = the dedup window (table.exec.state.ttl).
4. dimensions: labels / values maps, labels_key and the sorted dimensions JSON, derived with
   regular expressions over the dimensions text (Flink SQL has no JSON-object iteration).
5. event time: the deduplicated rows go through a DataStream hop (to_data_stream ->
   from_data_stream, Java only) because a watermark can only be declared on a table's own
   column, and event time lives inside the events array: WATERMARK = event_time - 5 s (on a
   row time shifted by ROWTIME_SHIFT_MS), emitted after every row
   (pipeline.auto-watermark-interval = 0), so lateness is decided per row exactly as the
   Python engine does.
6. lateness: is_late = the event's window [s, s+60 s) is complete by CURRENT_WATERMARK, i.e.
   s + 59 999 ms <= watermark (s floored as in Python, negative times too). On-time rows feed
   TUMBLE(1 minute) aggregates; late rows are routed EXPLICITLY to their own usage_minute rows
   (late_key = idempotency key) and to late_hours, because a window aggregate would drop them
   silently. The same predicate gates both branches, so no event is both or neither.
   late_hours also gets the hour of every event received after its hour ended (on time or
   not): that hour's rollup may have run already, and an idle partition's watermark lags.

Watermarks are per source table: locally each partition file is its own table (its own
pipeline inside the ONE job), which is the Python engine's per-partition watermark. With
Kafka, the watermark is declared after the dedup, on each subtask's stream of rows keyed by
event, i.e. mixing all partitions: it follows the latest event time seen from ANY partition,
so an event can be late here and on time in Python (its partition lags behind another) or,
with parallelism > 1, the reverse. Totals agree (every event is counted once, on time or as a
late row); the late/on-time split, the late rows and late_hours (re-rollups) can differ both
ways (README.md, "Where it differs from the Python engine").

Sinks: locally, NDJSON files under --output-dir/{usage_events,usage_minute,late_hours}.
In a cluster the rows go to three Kafka topics (JSON, exactly-once) that ClickHouse ingests
with Kafka-engine tables + materialized views into the warehouse_schema tables: the upstream
JDBC connector has no ClickHouse dialect and ClickHouse's own Flink connector is
DataStream-only, so Kafka is the one sink both sides support without custom Java.
Both sinks write the same JSON ('format' = 'json', same options): one row per line / per
message. Times are epoch milliseconds in every sink (fromUnixTimestamp64Milli on the
ClickHouse side). The ClickHouse side is byoc_platform/warehouse_cluster.py, created by
`byoc warehouse migrate` when stream.engine = flink; it reads committed transactions only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # PyFlink is imported lazily: --help and the SQL builders work without it
    from pyflink.table import StatementSet, StreamTableEnvironment

log = logging.getLogger("byoc.flink.usage_job")

WINDOW_MS = 60_000
HOUR_MS = 3_600_000
DEFAULT_DEDUP_WINDOW_S = 7 * 24 * 3600
DEFAULT_OUT_OF_ORDERNESS_MS = 5000
# The row time is the event time plus this (0001-01-01 to 1970-01-01, whole days, so minute
# and hour windows stay aligned): Flink's watermark assigner emits no watermark below 0 (its
# start value), so without the shift nothing before 1970-01-01T00:00:05 could be late.
ROWTIME_SHIFT_MS = 62_135_596_800_000

# ---------------------------------------------------------------- regular expressions (Java)
# Inputs are compact JSON written by msgspec (the runtime API's encoder): no whitespace, and
# inside a string every '"' is escaped, so a token pattern cannot match from inside a string.
# Flink's REGEXP_REPLACE takes its replacement literally (no $1 group references), so every
# rewrite below is a constant replacement positioned by lookaround.
_STR = r'"(?:[^"\\]|\\.)*"'
_NUM = r"-?[0-9][0-9.eE+-]*"
# One event object of the events array (one level of nesting: its dimensions).
EVENT_RE = r'\{(?:[^"{}]++|"(?:[^"\\]++|\\.)*+"|\{(?:[^"{}]++|"(?:[^"\\]++|\\.)*+")*+\})*+\}'
DIMS_RE = r'"dimensions":(\{(?:[^"{}]++|"(?:[^"\\]++|\\.)*+")*+\})'
# Group 1 = one '"key":value' pair of the dimensions object.
PAIR_RE = rf"[{{,]({_STR}:(?:{_STR}|true|false|{_NUM}))"
# Below, pairs are joined by CHR(1) (control characters never occur raw in JSON text), so a
# pair is exactly one segment: (?<=^|\x01) anchors at its start, (?=\x01|$) at its end.
_SEG_START = r"(?:^|\x01)"
_SEG_END = r"(?=\x01|$)"
NUMERIC_PAIR_RE = rf"{_SEG_START}{_STR}:{_NUM}{_SEG_END}"
LABEL_PAIR_RE = rf"{_SEG_START}{_STR}:(?:{_STR}|true|false){_SEG_END}"
TRUE_RE = rf'(?<=":)true{_SEG_END}'
FALSE_RE = rf'(?<=":)false{_SEG_END}'
# The position of the quote that closes a pair's key: a lookbehind over the key's characters
# from the segment start. Java needs a plain bounded class there, so this holds for keys of
# at most 256 characters without a '"' (dimension names outside that are not split/sorted
# like Python does; the parity fixture stays inside it).
_KEY_BODY = r'(?<=(?:^|\x01)"[^"\x01]{0,256})'
KEY_END_RE = rf'{_KEY_BODY}(?=":)'
KEY_VALUE_SEP_RE = rf'{_KEY_BODY}":"?'  # '":' or '":"' between key and value
SEG_OPEN_QUOTE_RE = r'(?<=^|\x01)"'
SEG_CLOSE_QUOTE_RE = rf'"{_SEG_END}'
LEADING_SEP_RE = r"^\x01"
ESCAPED_QUOTE_RE = r'\\"'
ESCAPED_BACKSLASH_RE = r"\\\\"
SORT_MARK_RE = r"\x02"

SEP_ENTRY = "CHR(1)"
SEP_KV = "CHR(2)"


def q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def floor_sql(expr: str, unit_ms: int) -> str:
    """expr rounded down to a multiple of unit_ms, as Python's ``t - t % unit`` (a floor for
    negative times too: SQL's MOD truncates toward zero, MOD(-1, 60000) = -1)."""
    return f"({expr} - MOD(MOD({expr}, {unit_ms}) + {unit_ms}, {unit_ms}))"


def _replace(expr: str, pattern: str, replacement: str = "''") -> str:
    return f"REGEXP_REPLACE({expr}, {q(pattern)}, {replacement})"


def pairs_sql(json_object: str) -> str:
    """'"k1":v1' CHR(1) '"k2":v2' ...: the pairs of a flat JSON object, in order."""
    pairs = f"ARRAY_JOIN(REGEXP_EXTRACT_ALL({json_object}, {q(PAIR_RE)}, 1), {SEP_ENTRY})"
    return f"COALESCE({pairs}, '')"  # no dimensions: REGEXP_EXTRACT gave NULL


def label_pairs_sql(pairs: str) -> str:
    """Only the label pairs, booleans quoted ("true"/"false"), as split_dimensions does."""
    labels = _replace(_replace(pairs, NUMERIC_PAIR_RE), LEADING_SEP_RE)
    return _replace(_replace(labels, TRUE_RE, "'\"true\"'"), FALSE_RE, "'\"false\"'")


def numeric_pairs_sql(pairs: str) -> str:
    return _replace(_replace(pairs, LABEL_PAIR_RE), LEADING_SEP_RE)


def sorted_object_sql(pairs: str) -> str:
    """'{"k":v,...}' with the pairs sorted by key, as msgspec's order="sorted" writes it.

    ARRAY_SORT compares strings as UTF-8 bytes, i.e. by code point, like Python's sorted().
    CHR(2) marked before each key's closing quote sorts "a" before "a b" before "ab".
    """
    marked = _replace(pairs, KEY_END_RE, SEP_KV)
    joined = f"ARRAY_JOIN(ARRAY_SORT(SPLIT({marked}, {SEP_ENTRY})), ',')"
    return f"'{{' || {_replace(joined, SORT_MARK_RE)} || '}}'"


def _map_entries(pairs: str) -> str:
    """'"k":"v"' / '"k":5' segments -> k CHR(2) v segments, JSON string escapes undone."""
    text = _replace(pairs, KEY_VALUE_SEP_RE, SEP_KV)
    text = _replace(_replace(text, SEG_OPEN_QUOTE_RE), SEG_CLOSE_QUOTE_RE)
    # \" then \\: left to right this is exact, as an unescaped quote never occurs inside.
    # Other escapes (control characters) stay as written.
    return _replace(_replace(text, ESCAPED_QUOTE_RE, "'\"'"), ESCAPED_BACKSLASH_RE, "'\\'")


def labels_map_sql(pairs: str) -> str:
    """MAP<STRING, STRING> of the label pairs."""
    return f"STR_TO_MAP({_map_entries(label_pairs_sql(pairs))}, {SEP_ENTRY}, {SEP_KV})"


def values_map_sql(pairs: str) -> str:
    """MAP<STRING, DOUBLE> of the numeric pairs."""
    entries = _map_entries(numeric_pairs_sql(pairs))
    return f"CAST(STR_TO_MAP({entries}, {SEP_ENTRY}, {SEP_KV}) AS MAP<STRING, DOUBLE>)"


def metrics_map_sql(pairs: str) -> str:
    """The values map plus metric '' = 1.0, the event count: one UNNEST yields every metric."""
    entries = f"{SEP_KV} || '1' || {SEP_ENTRY} || {_map_entries(numeric_pairs_sql(pairs))}"
    return f"CAST(STR_TO_MAP({entries}, {SEP_ENTRY}, {SEP_KV}) AS MAP<STRING, DOUBLE>)"


# ---------------------------------------------------------------- DDL
def file_source_ddl(name: str, path: Path) -> str:
    return f"""
        CREATE TEMPORARY TABLE {name} (
            record STRING,
            pt AS PROCTIME()
        ) WITH (
            'connector' = 'filesystem',
            'path' = {q(str(path))},
            'format' = 'raw'
        )"""


def kafka_source_ddl(name: str, args: argparse.Namespace) -> str:
    return f"""
        CREATE TEMPORARY TABLE {name} (
            record STRING,
            pt AS PROCTIME()
        ) WITH (
            'connector' = 'kafka',
            'topic' = {q(args.topic)},
            'properties.bootstrap.servers' = {q(args.bootstrap)},
            'properties.group.id' = {q(args.group_id)},
            'properties.isolation.level' = 'read_committed',
            'scan.startup.mode' = 'group-offsets',
            'properties.auto.offset.reset' = 'earliest',
            'value.format' = 'raw'
        )"""


# An event row without one of these is not an event (see flat_ in add_pipeline).
REQUIRED_COLUMNS = (
    "environment",
    "customer_id",
    "event_name",
    "idempotency_key",
    "event_time",
    "ingest_time",
)
EVENT_COLUMNS = """
    environment STRING, customer_id STRING, resource_id STRING, event_name STRING,
    idempotency_key STRING, event_time BIGINT, ingest_time BIGINT,
    labels MAP<STRING, STRING>, `values` MAP<STRING, DOUBLE>, dimensions STRING"""
MINUTE_COLUMNS = """
    environment STRING, customer_id STRING, resource_id STRING, event_name STRING,
    dimensions_key STRING, labels MAP<STRING, STRING>, `minute` BIGINT, metric STRING,
    late_key STRING, `count` BIGINT, `sum` DOUBLE, `min` DOUBLE, `max` DOUBLE,
    first_event_time BIGINT, last_event_time BIGINT, version BIGINT"""
LATE_HOUR_COLUMNS = "environment STRING, `hour` BIGINT, recorded_at BIGINT"
SINKS = {
    "usage_events": EVENT_COLUMNS,
    "usage_minute": MINUTE_COLUMNS,
    "late_hours": LATE_HOUR_COLUMNS,
}


def file_sink_ddl(table: str, columns: str, out_dir: Path) -> str:
    return f"""
        CREATE TEMPORARY TABLE sink_{table} ({columns}) WITH (
            'connector' = 'filesystem',
            'path' = {q(str(out_dir / table))},
            'format' = 'json'
        )"""


def kafka_sink_ddl(table: str, columns: str, args: argparse.Namespace) -> str:
    return f"""
        CREATE TEMPORARY TABLE sink_{table} ({columns}) WITH (
            'connector' = 'kafka',
            'topic' = {q(args.sink_topic_prefix + table)},
            'properties.bootstrap.servers' = {q(args.bootstrap)},
            'format' = 'json',
            'sink.delivery-guarantee' = 'exactly-once',
            'sink.transactional-id-prefix' = {q("byoc-flink-" + table)},
            'properties.transaction.timeout.ms' = '900000'
        )"""


# ---------------------------------------------------------------- the pipeline
def add_pipeline(
    t_env: StreamTableEnvironment, statements: StatementSet, source: str, suffix: str, ooo_ms: int
) -> None:
    """Views and INSERTs for one source table (one partition locally, the topic in Kafka)."""
    from pyflink.table import Schema

    events_at = "SUBSTR(record, POSITION('\"events\":[' IN record) + 10)"
    # Rows missing a required field never go further: a null key must not deduplicate with
    # other null keys, and a null event time must not reach the watermark ("RowTime field
    # should not be null" fails the job, which then restarts on the same record for ever).
    # They come only from records the Python engine dead-letters (not EventBatches), e.g. an
    # event with a nested object in its dimensions: EVENT_RE then picks the inner object.
    # TRY_CAST: a non-integer time is null (CAST would throw, the same endless restart).
    required = " AND ".join(f"{column} IS NOT NULL" for column in REQUIRED_COLUMNS)
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW flat_{suffix} AS
        SELECT * FROM (
            SELECT
                JSON_VALUE(record, '$.environment') AS environment,
                TRY_CAST(JSON_VALUE(record, '$.receivedAt') AS BIGINT) AS ingest_time,
                JSON_VALUE(e, '$.customerId') AS customer_id,
                COALESCE(JSON_VALUE(e, '$.resourceId'), '') AS resource_id,
                JSON_VALUE(e, '$.eventName') AS event_name,
                JSON_VALUE(e, '$.idempotencyKey') AS idempotency_key,
                TRY_CAST(JSON_VALUE(e, '$.timestamp') AS BIGINT) AS event_time,
                {pairs_sql(f"REGEXP_EXTRACT(e, {q(DIMS_RE)}, 1)")} AS pairs,
                pt
            FROM {source}
            CROSS JOIN UNNEST(REGEXP_EXTRACT_ALL({events_at}, {q(EVENT_RE)}, 0)) AS x(e))
        WHERE {required}""")
    # First occurrence wins: ORDER BY proctime ASC keeps the first row and emits inserts only.
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW deduped_{suffix} AS
        SELECT environment, customer_id, resource_id, event_name, idempotency_key,
               event_time, ingest_time,
               {labels_map_sql("pairs")} AS labels,
               {values_map_sql("pairs")} AS `values`,
               {sorted_object_sql("pairs")} AS dimensions,
               {sorted_object_sql(label_pairs_sql("pairs"))} AS dimensions_key,
               {metrics_map_sql("pairs")} AS metrics
        FROM (
            SELECT *, ROW_NUMBER() OVER (
                PARTITION BY environment, customer_id, idempotency_key ORDER BY pt ASC) AS rn
            FROM flat_{suffix})
        WHERE rn = 1""")
    statements.add_insert_sql(f"""
        INSERT INTO sink_usage_events
        SELECT environment, customer_id, resource_id, event_name, idempotency_key,
               event_time, ingest_time, labels, `values`, dimensions
        FROM deduped_{suffix}""")

    # Event time lives inside the array, so the watermark is declared on the flattened rows.
    stream = t_env.to_data_stream(t_env.from_path(f"deduped_{suffix}"))
    timed = t_env.from_data_stream(
        stream,
        Schema.new_builder()
        .column_by_expression("rt", f"TO_TIMESTAMP_LTZ(event_time + {ROWTIME_SHIFT_MS}, 3)")
        .watermark("rt", f"rt - INTERVAL '{ooo_ms / 1000:.3f}' SECOND")
        .build(),
    )
    t_env.create_temporary_view(f"timed_{suffix}", timed)
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW classified_{suffix} AS
        SELECT *, COALESCE(
            TO_TIMESTAMP_LTZ(
                {floor_sql("event_time", WINDOW_MS)} + {WINDOW_MS - 1 + ROWTIME_SHIFT_MS}, 3)
                <= CURRENT_WATERMARK(rt), FALSE) AS is_late
        FROM timed_{suffix}""")
    t_env.execute_sql(f"""
        CREATE TEMPORARY VIEW metric_rows_{suffix} AS
        SELECT c.*, m.metric, m.val
        FROM classified_{suffix} AS c CROSS JOIN UNNEST(c.metrics) AS m(metric, val)""")
    t_env.execute_sql(
        f"CREATE TEMPORARY VIEW ontime_{suffix} AS "
        f"SELECT * FROM metric_rows_{suffix} WHERE NOT is_late"
    )
    statements.add_insert_sql(f"""
        INSERT INTO sink_usage_minute
        SELECT environment, customer_id, resource_id, event_name, dimensions_key,
               {labels_map_sql(pairs_sql("dimensions_key"))},
               {floor_sql("MIN(event_time)", WINDOW_MS)}, metric, '',
               COUNT(*), SUM(val), MIN(val), MAX(val), MIN(event_time), MAX(event_time),
               COUNT(*)
        FROM TABLE(TUMBLE(
            TABLE ontime_{suffix}, DESCRIPTOR(rt), INTERVAL '{WINDOW_MS // 1000}' SECOND))
        GROUP BY window_start, window_end, environment, customer_id, resource_id,
                 event_name, dimensions_key, metric""")
    statements.add_insert_sql(f"""
        INSERT INTO sink_usage_minute
        SELECT environment, customer_id, resource_id, event_name, dimensions_key, labels,
               {floor_sql("event_time", WINDOW_MS)}, metric, idempotency_key,
               CAST(1 AS BIGINT), val, val, val, event_time, event_time, CAST(1 AS BIGINT)
        FROM metric_rows_{suffix} WHERE is_late""")
    statements.add_insert_sql(f"""
        INSERT INTO sink_late_hours
        SELECT environment, {floor_sql("event_time", HOUR_MS)}, ingest_time
        FROM classified_{suffix}
        WHERE is_late OR event_time < {floor_sql("ingest_time", HOUR_MS)}""")


def partition_inputs(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files.extend(sorted(path.glob("partition-*.ndjson")))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"--input: no such file or directory: {path}")
    if not files:
        raise SystemExit("--input: no partition-*.ndjson files found")
    return files


def build(args: argparse.Namespace) -> StatementSet:
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    env = StreamExecutionEnvironment.get_execution_environment()
    t_env = StreamTableEnvironment.create(env)
    config = t_env.get_config()
    config.set("table.local-time-zone", "UTC")
    # Watermark after every row that advances it: lateness is decided per row, as in Python.
    config.set("pipeline.auto-watermark-interval", "0 ms")
    # One-phase aggregation: SUM over doubles then adds in arrival order, like Python.
    config.set("table.optimizer.agg-phase-strategy", "ONE_PHASE")
    config.set("table.exec.state.ttl", f"{args.dedup_window_s} s")
    config.set("pipeline.name", "byoc-usage")
    if args.source == "file":
        env.set_parallelism(1)  # one split per partition file: per-partition watermarks
        # the file sink commits its part files on checkpoints (and at the end of the input)
        config.set("execution.checkpointing.interval", "2 s")
        # a bounded run fails after a few restarts instead of retrying a bad record for ever
        config.set("restart-strategy.type", "fixed-delay")
        config.set("restart-strategy.fixed-delay.attempts", "3")
        config.set("restart-strategy.fixed-delay.delay", "1 s")
        out_dir = Path(args.output_dir)
        for table, columns in SINKS.items():
            t_env.execute_sql(file_sink_ddl(table, columns, out_dir))
    else:
        for table, columns in SINKS.items():
            t_env.execute_sql(kafka_sink_ddl(table, columns, args))

    statements = t_env.create_statement_set()
    if args.source == "file":
        for n, path in enumerate(partition_inputs([Path(p) for p in args.input])):
            t_env.execute_sql(file_source_ddl(f"src_{n}", path.absolute()))
            add_pipeline(t_env, statements, f"src_{n}", str(n), args.out_of_orderness_ms)
    else:
        t_env.execute_sql(kafka_source_ddl("src_kafka", args))
        add_pipeline(t_env, statements, "src_kafka", "kafka", args.out_of_orderness_ms)
    return statements


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["file", "kafka"], required=True)
    parser.add_argument("--input", nargs="+", default=[], help="partition NDJSON files or dirs")
    parser.add_argument("--output-dir", help="file sink root (--source file)")
    parser.add_argument("--bootstrap", default=env("BYOC_KAFKA__BOOTSTRAP", "kafka:9092"))
    parser.add_argument("--topic", default=env("BYOC_KAFKA__EVENTS_TOPIC", "usage.events"))
    parser.add_argument("--group-id", default=env("BYOC_FLINK__GROUP_ID", "byoc-flink-usage"))
    parser.add_argument(
        "--sink-topic-prefix", default=env("BYOC_FLINK__SINK_TOPIC_PREFIX", "byoc.rows.")
    )
    parser.add_argument(
        "--dedup-window-s",
        type=int,
        default=int(float(env("BYOC_STREAM__DEDUP_WINDOW_S", DEFAULT_DEDUP_WINDOW_S))),
    )
    parser.add_argument(
        "--out-of-orderness-ms",
        type=int,
        default=int(env("BYOC_STREAM__OUT_OF_ORDERNESS_MS", DEFAULT_OUT_OF_ORDERNESS_MS)),
    )
    parser.add_argument("--explain", action="store_true", help="print the plan, do not run")
    args = parser.parse_args(argv)
    if args.source == "file" and (not args.input or not args.output_dir):
        parser.error("--source file needs --input and --output-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    statements = build(args)
    if args.explain:
        print(statements.explain())
        return 0
    log.info("submitting byoc-usage (source=%s)", args.source)
    result = statements.execute()
    if args.source == "file":
        result.wait()  # bounded input: returns when every partition file is processed
        log.info("done: rows under %s", args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
