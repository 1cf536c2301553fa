"""The Dagster-owned tables in a cluster: with ``clickhouse.cluster`` set they are created
replicated and ON CLUSTER (like the stream's tables), with the single-node columns, keys and
partitioning; each statement parses in the real engine."""

from __future__ import annotations

import re

from assets.warehouse_tables import ensure_tables, statements
from byoc_platform import clients
from byoc_platform.warehouse_cluster import to_replicated

ENGINE_LINE = re.compile(r"^ENGINE = .*$", re.M)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def command(self, cmd: str) -> object:
        self.sent.append(cmd)
        return None


def test_cluster_setting_creates_replicated_tables_on_the_cluster() -> None:
    single, replicated = Recorder(), Recorder()
    ensure_tables(single, "byoc")
    ensure_tables(replicated, "byoc", "byoc")
    assert single.sent == statements("byoc")
    assert len(replicated.sent) == len(single.sent)
    assert all(" ON CLUSTER byoc" in s for s in replicated.sent)
    tables = [s for s in replicated.sent if "CREATE TABLE" in s]
    assert tables and all("ENGINE = Replicated" in s for s in tables)


def test_replicated_statements_parse_and_keep_the_single_node_definition(infra) -> None:
    client = clients.clickhouse(infra.settings)
    try:

        def formatted(sql: str) -> str:
            return client.query(
                "SELECT formatQuery({q:String})", parameters={"q": sql}
            ).result_rows[0][0]

        for local in statements("byoc"):
            cluster = formatted(to_replicated(local, "byoc"))
            assert ENGINE_LINE.sub("", cluster).replace(" ON CLUSTER byoc", "") == ENGINE_LINE.sub(
                "", formatted(local)
            )
    finally:
        client.close()
