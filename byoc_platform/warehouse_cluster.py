"""The warehouse schema in a ClickHouse cluster, and ClickHouse's ingestion of the Flink job's rows.

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

HOT_TABLES = ("usage_events", "usage_minute", "late_hours")
ERRORS_TABLE = "rows_ingest_errors"

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


def _written_ms(name: str) -> WireColumn:  # epoch ms -> DateTime64(3), never before the write
    return WireColumn(
        name,
        "Int64",
        f"greatest(fromUnixTimestamp64Milli(q.{name}, 'UTC'), now64(3, 'UTC'))",
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
    """Where ClickHouse reads the Flink job's rows."""

    bootstrap: str
    topic_prefix: str = "byoc.rows."
    # Consumer group per table: <group>.<table>. The replicas' queue tables share it, so each
    # partition is read by one replica (replication copies the rows to the others).
    group: str = "byoc-clickhouse-rows"
    format: str = "JSONEachRow"
    num_consumers: int = 1  # per replica and table

    def topic(self, table: str) -> str:
        return self.topic_prefix + table


def queue_table(table: str) -> str:
    return f"rows_queue_{table}"


def view_name(table: str) -> str:
    return f"rows_mv_{table}"


def errors_view_name(table: str) -> str:
    return f"rows_errors_mv_{table}"


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


def _queue_engine(ingest: KafkaIngest, table: str) -> str:
    settings = {
        "kafka_broker_list": _literal(ingest.bootstrap),
        "kafka_topic_list": _literal(ingest.topic(table)),
        "kafka_group_name": _literal(f"{ingest.group}.{table}"),
        "kafka_format": _literal(ingest.format),
        "kafka_handle_error_mode": "'stream'",
        "kafka_num_consumers": str(ingest.num_consumers),
        **{k: str(v) for k, v in QUEUE_FORMAT_SETTINGS.items()},
    }
    lines = ",\n            ".join(f"{k} = {v}" for k, v in settings.items())
    return f"ENGINE = Kafka\n        SETTINGS\n            {lines}"


def ingest_statements(
    database: str,
    cluster: str | None,
    ingest: KafkaIngest,
    *,
    queue_engine: str | None = None,
) -> list[str]:
    """The error table, then per table: the queue table, its view, its error view.

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
            engine = _queue_engine(ingest, table)
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
        statements.append(f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{errors_view_name(table)}{on_cluster}
        TO {db}.{ERRORS_TABLE} AS
        SELECT
            q._topic AS topic,
            q._partition AS partition,
            q._offset AS offset,
            q._timestamp_ms AS kafka_time,
            q._raw_message AS raw_message,
            q._error AS error
        FROM {db}.{queue_table(table)} AS q
        WHERE length(q._error) > 0
        """)
    return statements


# ----------------------------------------------------------------------- chosen by settings
def kafka_ingest(settings: Settings) -> KafkaIngest:
    assert settings.kafka.bootstrap is not None
    return KafkaIngest(
        bootstrap=settings.kafka.bootstrap, topic_prefix=settings.flink.sink_topic_prefix
    )


def migrations_for(settings: Settings) -> list[str]:
    """The statements this deployment needs.

    - ``clickhouse.cluster`` unset: the single-node tables (``warehouse_schema``); set: the
      replicated tables created ``ON CLUSTER`` that cluster.
    - ``stream.engine = "flink"``: plus the Kafka ingestion of the Flink job's rows.
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
