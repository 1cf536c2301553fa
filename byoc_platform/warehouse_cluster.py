"""The warehouse schema in a ClickHouse cluster, and ClickHouse's ingestion of the Flink job's rows
and of the usage reports.

``warehouse_schema.migrations`` creates ``ReplacingMergeTree`` tables: right for one node. In a
cluster (deploy/: an Altinity ``ClickHouseInstallation``, one shard, replicas across zones) every
replica must hold the same rows, so :func:`cluster_migrations` turns the same statements into
``Replicated*MergeTree`` tables created ``ON CLUSTER``. The column lists, sorting keys and
partitioning are the local statements' own text, so the Dagster assets (rollup, archive,
retention) read and drop partitions on the cluster exactly as they do locally.

With stream processing on Flink (``stream.engine = "flink"``), the job writes its rows as JSON
(times as epoch milliseconds) to the Kafka topics ``<flink.sink_topic_prefix><table>`` with
exactly-once transactions. :func:`ingest_statements` creates, per table, a Kafka-engine queue
table reading that topic and a materialized view converting each row into the table's types.
Only committed transactions are read: the ClickHouse server's librdkafka setting
``isolation.level`` (``<kafka><isolation_level>read_committed</isolation_level></kafka>``,
set by the installation in deploy/; it is also librdkafka's default). A row that does not
parse never stops ingestion (``kafka_handle_error_mode = 'stream'``): it goes to
``rows_ingest_errors`` with its topic, partition, offset, raw text and error.

The aggregated usage reports (topic ``kafka.reports_topic``, ``usage.reports``: one record =
one ``UsageReportBatch``) reach ``usage_reports`` the same way with Flink: a queue table reading
each record whole (``JSONAsString``), a view splitting it into one row per report (the batch is
checked first: one that does not decode as a ``UsageReportBatch`` goes whole to
``rows_ingest_errors``, like a row that does not parse), and a view on ``usage_reports`` writing
a ``late_hours`` row for each report whose hour ended before it was received, so the rollup
sensor rolls that hour up again. With the embedded stream processor, that processor loads the
topic instead and none of this exists. ``usage_reports`` itself is one of the hot tables
(``warehouse_schema``) in every deployment: the rollup reads it whichever engine fills it, so
it is created (replicated) and checked on every replica like the others.

Delivery from Kafka into ClickHouse is at least once (the engine commits offsets after the
insert); a row read twice is collapsed by the tables' ``ReplacingMergeTree`` keys under
``FINAL``, which is how every reader reads them.

Every statement is idempotent (``IF NOT EXISTS``): a changed definition needs a new statement
(``ALTER``, or a view dropped and created again), never an edit of an existing one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from byoc_platform.warehouse_schema import migrations

if TYPE_CHECKING:
    from byoc_platform.settings import Settings

log = logging.getLogger("byoc.warehouse")

# The Keeper path of a replicated table, per shard, and the replica's name: macros every host
# of the Altinity installation defines ({shard}, {replica}); {database} and {table} are
# expanded at creation. Same as the installation's default_replica_path/name (deploy/).
REPLICA_PATH = "/clickhouse/tables/{database}/{table}/{shard}"
REPLICA_NAME = "{replica}"

ERRORS_TABLE = "rows_ingest_errors"
REPORTS_TABLE = "usage_reports"

# Format settings of the queue tables (Kafka engine SETTINGS accept format settings).
# precise_float_parsing: sums and values are compared to the bit with the Python engine.
QUEUE_FORMAT_SETTINGS: dict[str, int] = {"precise_float_parsing": 1}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CREATE_DATABASE = re.compile(r"^(\s*CREATE DATABASE IF NOT EXISTS \w+)(\s*)$")
_CREATE_TABLE = re.compile(r"^(\s*CREATE TABLE IF NOT EXISTS \w+\.\w+)( \()")
_ENGINE = re.compile(r"ENGINE = (\w*MergeTree)(?:\(([^()]*)\))?")
_LOCAL_DEDUP_WINDOW = "non_replicated_deduplication_window"
_REPLICATED_DEDUP_WINDOW = "replicated_deduplication_window"


class _Commander(Protocol):
    def command(self, cmd: str) -> object: ...


class _Querier(_Commander, Protocol):
    def query(self, query: str, parameters: Any = None) -> Any: ...


class SchemaError(RuntimeError):
    """The warehouse's tables are not what the platform expects (e.g. not replicated)."""


def _identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{what} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*): {value!r}")
    return value


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ----------------------------------------------------------------------- replicated tables
def to_replicated(statement: str, cluster: str) -> str:
    """A ``CREATE ... IF NOT EXISTS`` statement of ``warehouse_schema`` for a cluster.

    ``ON CLUSTER`` after the name; ``XMergeTree(args)`` becomes
    ``ReplicatedXMergeTree('<path>', '<replica>', args)``;
    ``non_replicated_deduplication_window`` becomes ``replicated_deduplication_window`` (the
    same insert-dedup window). Everything else (columns, keys, partitioning) is kept as written.
    """
    on_cluster = f" ON CLUSTER {_identifier(cluster, 'cluster')}"
    if match := _CREATE_DATABASE.match(statement):
        return match.group(1) + on_cluster + match.group(2)
    if not _CREATE_TABLE.match(statement):
        raise ValueError(f"not a CREATE DATABASE/TABLE IF NOT EXISTS statement: {statement!r}")
    engines = _ENGINE.findall(statement)
    if len(engines) != 1:
        raise ValueError(f"expected one *MergeTree engine clause: {statement!r}")
    statement = _CREATE_TABLE.sub(lambda m: m.group(1) + on_cluster + m.group(2), statement, 1)

    def replicated(m: re.Match[str]) -> str:
        engine, args = m.group(1), m.group(2)
        if engine.startswith("Replicated"):
            raise ValueError(f"already replicated: {engine}")
        params = [_literal(REPLICA_PATH), _literal(REPLICA_NAME)] + ([args] if args else [])
        return f"ENGINE = Replicated{engine}({', '.join(params)})"

    statement = _ENGINE.sub(replicated, statement, 1)
    return statement.replace(_LOCAL_DEDUP_WINDOW, _REPLICATED_DEDUP_WINDOW)


def cluster_migrations(database: str, cluster: str) -> list[str]:
    """``warehouse_schema.migrations``, replicated and ``ON CLUSTER``, in the same order."""
    return [to_replicated(s, cluster) for s in migrations(_identifier(database, "database"))]


# ----------------------------------------------------------------------- Flink rows from Kafka
@dataclass(frozen=True)
class WireColumn:
    """One field of the job's JSON rows: its type as read, and the table column made of it."""

    name: str
    wire_type: str
    expression: str  # over the queue table aliased ``q``; its value has the table's type


def _ms(name: str) -> WireColumn:  # epoch ms -> DateTime64(3, 'UTC')
    return WireColumn(name, "Int64", f"fromUnixTimestamp64Milli(q.{name}, 'UTC')")


def _not_before_write(time: str) -> str:  # SQL: a DateTime64(3) time, or the write time if later
    return f"greatest({time}, now64(3, 'UTC'))"


def _written_ms(name: str) -> WireColumn:  # epoch ms -> DateTime64(3), never before the write
    return WireColumn(
        name, "Int64", _not_before_write(f"fromUnixTimestamp64Milli(q.{name}, 'UTC')")
    )


def _floor_s(name: str) -> WireColumn:  # epoch ms of a minute/hour start -> DateTime('UTC')
    return WireColumn(name, "Int64", f"toDateTime(intDiv(q.{name}, 1000), 'UTC')")


def _same(name: str, wire_type: str) -> WireColumn:
    return WireColumn(name, wire_type, f"q.`{name}`")


_S, _LABELS = "String", "Map(String, String)"
# Field order = the job's sink columns = the table's columns (tests hold all three together).
WIRE_COLUMNS: dict[str, tuple[WireColumn, ...]] = {
    "usage_events": (
        _same("environment", _S),
        _same("customer_id", _S),
        _same("resource_id", _S),
        _same("event_name", _S),
        _same("idempotency_key", _S),
        _ms("event_time"),
        _ms("ingest_time"),
        _same("labels", _LABELS),
        _same("values", "Map(String, Float64)"),
        _same("dimensions", _S),
    ),
    "usage_minute": (
        _same("environment", _S),
        _same("customer_id", _S),
        _same("resource_id", _S),
        _same("event_name", _S),
        _same("dimensions_key", _S),
        _same("labels", _LABELS),
        _floor_s("minute"),
        _same("metric", _S),
        _same("late_key", _S),
        _same("count", "UInt64"),
        _same("sum", "Float64"),
        _same("min", "Float64"),
        _same("max", "Float64"),
        _ms("first_event_time"),
        _ms("last_event_time"),
        _same("version", "UInt64"),
    ),
    "late_hours": (
        _same("environment", _S),
        _floor_s("hour"),
        # The time the row is written, not the job's receive time: the table keeps the newest
        # per (environment, hour), so a row written later with an older receive time would be
        # hidden under FINAL and its hour never rolled up again (warehouse_schema).
        _written_ms("recorded_at"),
    ),
}
# The tables the Flink job's rows fill, then every table the platform's readers need on each
# replica: usage_reports is filled from usage.reports, whichever stream engine runs.
ROW_TABLES = tuple(WIRE_COLUMNS)
HOT_TABLES = (*ROW_TABLES, REPORTS_TABLE)

# The Kafka engine's virtual columns the views read, with the engine's own types; a stand-in
# queue (tests) declares them as ordinary columns.
VIRTUAL_COLUMNS = (
    ("_topic", "LowCardinality(String)"),
    ("_partition", "UInt64"),
    ("_offset", "UInt64"),
    ("_timestamp_ms", "Nullable(DateTime64(3))"),
    ("_raw_message", "String"),
    ("_error", "String"),
)


@dataclass(frozen=True)
class KafkaIngest:
    """Where ClickHouse reads the Flink job's rows and the usage reports."""

    bootstrap: str
    topic_prefix: str = "byoc.rows."
    reports_topic: str = "usage.reports"
    # Consumer group per table: <group>.<table>. The replicas' queue tables share it, so each
    # partition is read by one replica (replication copies the rows to the others).
    group: str = "byoc-clickhouse-rows"
    format: str = "JSONEachRow"
    num_consumers: int = 1  # per replica and table

    def topic(self, table: str) -> str:
        return self.reports_topic if table == REPORTS_TABLE else self.topic_prefix + table


def queue_table(table: str) -> str:
    return f"rows_queue_{table}"


def view_name(table: str) -> str:
    return f"rows_mv_{table}"


def errors_view_name(table: str) -> str:
    return f"rows_errors_mv_{table}"


def late_hours_view_name(table: str) -> str:
    return f"rows_late_hours_mv_{table}"


def _errors_table(db: str) -> str:
    return f"""
        CREATE TABLE IF NOT EXISTS {db}.{ERRORS_TABLE} (
            topic LowCardinality(String),
            partition UInt64,
            offset UInt64,
            kafka_time Nullable(DateTime64(3)),
            raw_message String,
            error String,
            recorded_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC')
        )
        ENGINE = MergeTree
        PARTITION BY toYYYYMM(recorded_at)
        ORDER BY (topic, partition, offset)
        TTL toDateTime(recorded_at) + INTERVAL 90 DAY
        """


def _queue_engine(ingest: KafkaIngest, table: str, kafka_format: str) -> str:
    settings = {
        "kafka_broker_list": _literal(ingest.bootstrap),
        "kafka_topic_list": _literal(ingest.topic(table)),
        "kafka_group_name": _literal(f"{ingest.group}.{table}"),
        "kafka_format": _literal(kafka_format),
        "kafka_handle_error_mode": "'stream'",
        "kafka_num_consumers": str(ingest.num_consumers),
        **{k: str(v) for k, v in QUEUE_FORMAT_SETTINGS.items()},
    }
    lines = ",\n            ".join(f"{k} = {v}" for k, v in settings.items())
    return f"ENGINE = Kafka\n        SETTINGS\n            {lines}"


# ----------------------------------------------------------------------- usage reports from Kafka
# A usage.reports record (byoc_platform.events.UsageReportBatch) is one batch of reports, so its
# queue reads each record whole as text (JSONAsString) into REPORT_RECORD, and the view splits
# it (ARRAY JOIN of its usages). JSONAsString only checks that a record is one JSON object; the
# views check the batch itself (:func:`report_problem`) and send one that does not decode, whole,
# to the error table, as the Python consumers dead-letter it whole.
REPORT_RECORD = "record"
REPORTS_FORMAT = "JSONAsString"
# The DateTime columns (late_hours.hour) end in 2106; a time outside cannot be stored as sent.
_MAX_MS = 2**32 * 1000 - 1


def _json_is(doc: str, key: str, *types: str) -> str:
    return f"JSONType({doc}, {_literal(key)}) IN ({', '.join(map(_literal, types))})"


def _json_ms(doc: str, key: str) -> str:
    return (
        f"({_json_is(doc, key, 'Int64')} AND "
        f"JSONExtractInt({doc}, {_literal(key)}) BETWEEN 0 AND {_MAX_MS})"
    )


def _usages(record: str) -> str:
    # Each element's text as re-serialized compactly by ClickHouse's JSON parser: numbers in
    # their shortest form, which loses a float's type (3.0 is written 3, -0.0 is -0).
    return f"JSONExtractArrayRaw({record}, 'usages')"


def _usage_ok(u: str) -> str:
    """A usage decodes as a UsageReport: the types msgspec checks, and storable times."""
    dimension_values = ("String", "Int64", "Double", "Bool")  # DimensionValue (Int64: int)
    checks = [
        f"JSONType({u}) = 'Object'",
        *(_json_is(u, key, "String") for key in ("id", "customerId", "featureId")),
        _json_is(u, "updateBehavior", "String"),
        _json_is(u, "value", "Int64", "UInt64", "Double"),
        _json_ms(u, "createdAt"),
        *(_json_is(u, key, "String", "Null") for key in ("idempotencyKey", "resourceId")),
        f"(NOT JSONHas({u}, 'dimensions') OR ({_json_is(u, 'dimensions', 'Object')} AND "
        f"arrayAll(kv -> JSONType(kv.2) IN ({', '.join(map(_literal, dimension_values))}), "
        f"JSONExtractKeysAndValuesRaw({u}, 'dimensions'))))",
    ]
    return " AND ".join(checks)


def report_problem(record: str) -> str:
    """SQL ``WITH`` clause defining ``problem``: why the record text ``record`` is not a
    UsageReportBatch ('' when it is one)."""
    cases = [
        (f"NOT isValidJSON({record})", "'not JSON'"),
        (f"NOT {_json_is(record, 'v', 'Int64')}", "'v is not an integer'"),
        (f"NOT {_json_is(record, 'environment', 'String')}", "'environment is not a string'"),
        (f"NOT {_json_ms(record, 'receivedAt')}", "'receivedAt is not epoch ms (1970-2106)'"),
        (f"NOT {_json_is(record, 'usages', 'Array')}", "'usages is not an array'"),
        ("bad_usage > 0", "concat('usages[', toString(bad_usage - 1), '] is not a UsageReport')"),
    ]
    return (
        f"WITH\n            arrayFirstIndex(u -> NOT ({_usage_ok('u')}), {_usages(record)})"
        " AS bad_usage,\n            multiIf(\n                "
        + ",\n                ".join(f"{c}, {m}" for c, m in cases)
        + ",\n                ''\n            ) AS problem"
    )


# usage_reports' columns (warehouse_schema.USAGE_REPORTS_COLUMNS) from a batch ``b.record``,
# one of its usages ``u`` and that usage's value ``v``. Absent optional fields: '' (the
# JSONExtractString of a missing key or null), no dimensions: '{}'. dimensions is the object's
# text as _usages re-serializes it: keys and strings as sent, numbers in ClickHouse's shortest
# form. The value is read from the record's own text (all of a record's at once), so -0.0 stays
# -0.0, and to the bit: simdjson parses doubles exactly (it is the JSON functions' parser on
# AVX2 hosts, allow_simdjson = 1 by default; rapidjson, the fallback, can be 1 ulp off).
_B = f"b.{REPORT_RECORD}"
_VALUES = f"tupleElement(JSONExtract({_B}, 'usages', 'Array(Tuple(value Float64))'), 'value')"
REPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("environment", f"JSONExtractString({_B}, 'environment')"),
    ("customer_id", "JSONExtractString(u, 'customerId')"),
    ("resource_id", "JSONExtractString(u, 'resourceId')"),
    ("feature_id", "JSONExtractString(u, 'featureId')"),
    ("report_id", "JSONExtractString(u, 'id')"),
    ("value", "v"),
    ("update_behavior", "JSONExtractString(u, 'updateBehavior')"),
    ("idempotency_key", "JSONExtractString(u, 'idempotencyKey')"),
    ("report_time", "fromUnixTimestamp64Milli(JSONExtractInt(u, 'createdAt'), 'UTC')"),
    ("received_at", f"fromUnixTimestamp64Milli(JSONExtractInt({_B}, 'receivedAt'), 'UTC')"),
    ("dimensions", "if(JSONHas(u, 'dimensions'), JSONExtractRaw(u, 'dimensions'), '{}')"),
)


def _report_statements(
    db: str, on_cluster: str, ingest: KafkaIngest, queue_engine: str | None
) -> list[str]:
    """The reports' queue, the late-hours view, the view filling usage_reports, the error view.

    The late hours are read from usage_reports itself (a view on its inserts, created before
    the queue has a view): every report row the queue's view writes is seen, even those of the
    first blocks the queue consumes. Since ClickHouse 24.7 a block deduplicated by
    usage_reports on a retried insert still reaches this view.
    """
    table = REPORTS_TABLE
    record = f"q.{REPORT_RECORD}"
    problem = report_problem(record)  # the batch is checked once, before its usages are split
    nested_problem = problem.replace("\n", "\n    ")  # in the view's subquery
    declared = [(REPORT_RECORD, "String")]
    if queue_engine is None:
        engine = _queue_engine(ingest, table, REPORTS_FORMAT)
    else:
        declared += list(VIRTUAL_COLUMNS)
        engine = f"ENGINE = {queue_engine}"
    body = ",\n            ".join(f"`{name}` {wire_type}" for name, wire_type in declared)
    select = ",\n            ".join(f"{expr} AS `{name}`" for name, expr in REPORT_COLUMNS)
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {db}.{queue_table(table)}{on_cluster} (
            {body}
        )
        {engine}
        """,
        # A report whose hour ended before it was received: the rollup sensor rolls the hour
        # up again. recorded_at as the Flink rows' late_hours: the write time.
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{late_hours_view_name(table)}{on_cluster}
        TO {db}.late_hours AS
        SELECT DISTINCT
            r.environment AS environment,
            toStartOfHour(r.report_time) AS hour,
            {_not_before_write("r.received_at")} AS recorded_at
        FROM {db}.{table} AS r
        WHERE toStartOfHour(r.report_time) < toStartOfHour(r.received_at)
        """,
        f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view_name(table)}{on_cluster}
        TO {db}.{table} AS
        SELECT
            {select}
        FROM (
            {nested_problem}
            SELECT {record} AS {REPORT_RECORD}
            FROM {db}.{queue_table(table)} AS q
            WHERE length(q._error) = 0 AND problem = ''
        ) AS b
        ARRAY JOIN
            {_usages(_B)} AS u,
            {_VALUES} AS v
        """,
        _errors_view(
            db,
            on_cluster,
            table,
            raw=f"if(length(q._error) > 0, q._raw_message, {record})",
            error="if(length(q._error) > 0, q._error, problem)",
            where="length(q._error) > 0 OR problem != ''",
            with_=problem,
        ),
    ]


def _errors_view(
    db: str, on_cluster: str, table: str, raw: str, error: str, where: str, with_: str = ""
) -> str:
    with_ = f"\n        {with_}" if with_ else ""
    return f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{errors_view_name(table)}{on_cluster}
        TO {db}.{ERRORS_TABLE} AS{with_}
        SELECT
            q._topic AS topic,
            q._partition AS partition,
            q._offset AS offset,
            q._timestamp_ms AS kafka_time,
            {raw} AS raw_message,
            {error} AS error
        FROM {db}.{queue_table(table)} AS q
        WHERE {where}
        """


def ingest_statements(
    database: str,
    cluster: str | None,
    ingest: KafkaIngest,
    *,
    queue_engine: str | None = None,
) -> list[str]:
    """The error table, then per table: the queue table, its view(s), its error view.

    ``queue_engine`` None: Kafka-engine queues (what a deployment runs). Any other engine
    (``"Null"``) gives queues with the same columns plus the Kafka virtual columns the views
    read, declared as ordinary columns, so the views (byte for byte the deployed ones) can be
    fed by plain INSERTs in tests.
    """
    db = _identifier(database, "database")
    on_cluster = f" ON CLUSTER {_identifier(cluster, 'cluster')}" if cluster else ""
    if queue_engine is not None:
        _identifier(queue_engine, "queue_engine")
    errors = _errors_table(db)
    statements = [to_replicated(errors, cluster) if cluster else errors]
    for table, columns in WIRE_COLUMNS.items():
        declared = [(c.name, c.wire_type) for c in columns]
        if queue_engine is None:
            engine = _queue_engine(ingest, table, ingest.format)
        else:
            declared += list(VIRTUAL_COLUMNS)
            engine = f"ENGINE = {queue_engine}"
        body = ",\n            ".join(f"`{name}` {wire_type}" for name, wire_type in declared)
        statements.append(f"""
        CREATE TABLE IF NOT EXISTS {db}.{queue_table(table)}{on_cluster} (
            {body}
        )
        {engine}
        """)
        select = ",\n            ".join(f"{c.expression} AS `{c.name}`" for c in columns)
        # The view filling the table first: once a view is attached the engine consumes, so
        # a row read before the second view exists reaches only the first.
        statements.append(f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view_name(table)}{on_cluster}
        TO {db}.{table} AS
        SELECT
            {select}
        FROM {db}.{queue_table(table)} AS q
        WHERE length(q._error) = 0
        """)
        statements.append(
            _errors_view(
                db, on_cluster, table, "q._raw_message", "q._error", "length(q._error) > 0"
            )
        )
    return statements + _report_statements(db, on_cluster, ingest, queue_engine)


# ----------------------------------------------------------------------- chosen by settings
def kafka_ingest(settings: Settings) -> KafkaIngest:
    assert settings.kafka.bootstrap is not None
    return KafkaIngest(
        bootstrap=settings.kafka.bootstrap,
        topic_prefix=settings.flink.sink_topic_prefix,
        reports_topic=settings.kafka.reports_topic,
    )


def migrations_for(settings: Settings) -> list[str]:
    """The statements this deployment needs.

    - ``clickhouse.cluster`` unset: the single-node tables (``warehouse_schema``, usage_reports
      included); set: the replicated tables created ``ON CLUSTER`` that cluster.
    - ``stream.engine = "flink"``: plus the Kafka ingestion of the Flink job's rows and of the
      usage reports (``kafka.reports_topic``).
    """
    db, cluster = settings.clickhouse.database, settings.clickhouse.cluster
    statements = cluster_migrations(db, cluster) if cluster else migrations(db)
    if settings.stream.engine == "flink":
        statements += ingest_statements(db, cluster, kafka_ingest(settings))
    return statements


def apply_settings_migrations(client: _Commander, settings: Settings) -> int:
    """Apply :func:`migrations_for`; returns how many statements ran."""
    statements = migrations_for(settings)
    for statement in statements:
        client.command(statement)
    return len(statements)


# ----------------------------------------------------------------------- replication check
def replication_problems(
    rows: Iterable[tuple[str, str, str]], expected_hosts: int, tables: Collection[str]
) -> list[str]:
    """What is wrong with (host, table, engine) rows of the hot tables across the replicas.

    ``CREATE ... IF NOT EXISTS`` keeps a table that exists already, so a table created earlier
    without replication (or on one replica only) would stay that way silently.
    """
    by_host: dict[str, dict[str, str]] = {}
    for host, table, engine in rows:
        by_host.setdefault(host, {})[table] = engine
    problems = []
    if len(by_host) != expected_hosts:
        problems.append(f"tables found on {len(by_host)} of {expected_hosts} replicas")
    for host, engines in sorted(by_host.items()):
        for table in tables:
            engine = engines.get(table)
            if engine is None:
                problems.append(f"{host}: {table} is missing")
            elif not engine.startswith("Replicated"):
                problems.append(f"{host}: {table} is {engine}, not replicated")
    return problems


def table_engines(client: _Querier, database: str, source: str) -> list[tuple[str, str, str]]:
    """(host, table, engine) of ``database``'s tables read from ``source`` (a system.tables or
    ``clusterAllReplicas(<cluster>, system.tables)``)."""
    result = client.query(
        f"SELECT hostName(), name, engine FROM {source} WHERE database = {{db:String}}",
        parameters={"db": database},
    )
    return [(str(h), str(n), str(e)) for h, n, e in result.result_rows]


def check_replicated(client: _Querier, database: str, cluster: str) -> None:
    """Raise :class:`SchemaError` unless every replica of ``cluster`` holds the hot tables
    with a Replicated engine."""
    _identifier(cluster, "cluster")
    hosts = client.query(
        "SELECT count() FROM system.clusters WHERE cluster = {c:String}",
        parameters={"c": cluster},
    ).result_rows[0][0]
    if not hosts:
        raise SchemaError(f"cluster {cluster!r} is not defined on this ClickHouse server")
    rows = table_engines(client, database, f"clusterAllReplicas({cluster}, system.tables)")
    problems = replication_problems(rows, int(hosts), HOT_TABLES)
    if problems:
        raise SchemaError("; ".join(problems))
    log.info("hot tables replicated on %d replicas of %s", hosts, cluster)
