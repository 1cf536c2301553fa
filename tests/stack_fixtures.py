"""Real local components for tests, on free loopback ports in a temporary directory.

The same supervisor as `byoc up` starts them (tests/conftest.py exposes them as fixtures), so
tests exercise exactly the processes users run.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byoc_platform.settings import Ports, Settings
from byoc_platform.stack.bootstrap import ensure_api_key
from byoc_platform.stack.supervisor import Supervisor


def free_ports(count: int) -> list[int]:
    """Distinct ports free right now (held open together so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def test_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings with every port free and all data under ``data_dir``."""
    names = list(Ports.model_fields)
    ports = Ports(**dict(zip(names, free_ports(len(names)), strict=True)))
    return Settings(data_dir=data_dir, ports=ports, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test


def settings_env(settings: Settings) -> dict[str, str]:
    """BYOC_* variables that make a child process (e.g. `byoc up`) use these settings."""
    env = {"BYOC_DATA_DIR": str(settings.data_dir)}
    for name, port in settings.ports.model_dump().items():
        env[f"BYOC_PORTS__{name.upper()}"] = str(port)
    return env


@dataclass
class Stack:
    """Running components of one test stack."""

    settings: Settings
    supervisor: Supervisor
    started: list[str] = field(default_factory=list)

    @property
    def api_key(self) -> str:
        return ensure_api_key(self.settings)

    def clickhouse(self) -> Any:
        from byoc_platform.clients import clickhouse

        return clickhouse(self.settings)


def start_stack(settings: Settings, names: list[str], restart: bool = False) -> Stack:
    supervisor = Supervisor(settings, names, restart=restart)
    supervisor.start()
    return Stack(settings=settings, supervisor=supervisor, started=names)


@contextmanager
def stand_in_ingest(settings: Settings, db: str) -> Iterator[Any]:
    """A database ``db`` with the single-node tables and the cluster's Kafka ingestion views on
    ``Null`` stand-in queues (rows inserted into a queue go through the deployed views), dropped
    afterwards; yields a ClickHouse client."""
    from byoc_platform import clients
    from byoc_platform.warehouse_cluster import KafkaIngest, ingest_statements
    from byoc_platform.warehouse_schema import apply_migrations

    client = clients.clickhouse(settings)
    client.command(f"DROP DATABASE IF EXISTS {db}")
    apply_migrations(client, db)  # the single-node tables: same columns as the replicated ones
    never_contacted = KafkaIngest(bootstrap="127.0.0.1:9")  # the queues are Null tables
    for statement in ingest_statements(db, None, never_contacted, queue_engine="Null"):
        client.command(statement)
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()
