"""Run in a subprocess by test_warehouse_cluster.py: every cluster statement through an embedded
ClickHouse as far as one node without Keeper and Kafka can take it.

chdb runs in its own temporary directory here (one chdb data path per process, and a Kafka-engine
table left behind must not reach the shared test warehouse), with a config that defines the
replica macros ({shard}, {replica}) as the Altinity operator does on every host. ``ON CLUSTER``
needs Keeper ("Replicated DDL queries are disabled"), so each statement runs without that
clause; where a replicated table stops at "Can't create replicated table without ZooKeeper" (the
engine has accepted its arguments, version column and settings by then), its single-node
equivalent is created so the later statements (views) can be checked against it.

Prints one JSON object: per statement the error code (null = ran), the tables made, and the
Kafka queue tables' columns with their virtual columns.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import chdb

from byoc_platform.warehouse_cluster import (
    HOT_TABLES,
    KafkaIngest,
    cluster_migrations,
    ingest_statements,
    queue_table,
)
from byoc_platform.warehouse_schema import migrations

CONFIG = """<clickhouse>
  <macros><shard>01</shard><replica>probe-0</replica></macros>
</clickhouse>
"""
_CODE = re.compile(r"Code: (\d+)")


def main(database: str, cluster: str) -> None:
    ingest = KafkaIngest(bootstrap="127.0.0.1:9")  # nothing listens: consumers never connect
    deployed = cluster_migrations(database, cluster) + ingest_statements(database, cluster, ingest)
    local = migrations(database) + ingest_statements(database, None, ingest)
    work = Path(tempfile.mkdtemp(prefix="ch-probe-"))
    (work / "config.xml").write_text(CONFIG)
    conn = chdb.connect(f"file:{work / 'data'}?config-file={work / 'config.xml'}")
    cur = conn.cursor()
    outcomes = []
    for statement, fallback in zip(deployed, local, strict=True):
        clause = f" ON CLUSTER {cluster}"
        assert statement.count(clause) == 1, statement
        code, message = None, ""
        try:
            cur.execute(statement.replace(clause, ""))
        except Exception as exc:  # chdb raises with ClickHouse's "Code: N. DB::Exception: ..."
            message = str(exc)
            match = _CODE.search(message)
            code = int(match.group(1)) if match else -1
            if code == 225:  # NO_ZOOKEEPER: the last check before Keeper is contacted
                cur.execute(fallback)
        outcomes.append({"statement": statement, "code": code, "message": message[:500]})
    cur.execute(
        f"SELECT name, engine FROM system.tables WHERE database = '{database}' ORDER BY name"
    )
    tables = dict(cur.fetchall())
    queues = {}
    for table in HOT_TABLES:
        cur.execute(
            f"DESCRIBE TABLE {database}.{queue_table(table)} "
            "SETTINGS describe_include_virtual_columns = 1"
        )
        queues[table] = [[r[0], r[1]] for r in cur.fetchall()]
    print(json.dumps({"outcomes": outcomes, "tables": tables, "queues": queues}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
