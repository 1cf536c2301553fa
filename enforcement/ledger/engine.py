"""Engines for the ledger: SQLite (WAL) by default, PostgreSQL (psycopg 3) in a cluster.

SQLite: the driver's own transaction handling is switched off so that the ledger decides how a
transaction begins: write transactions run ``BEGIN IMMEDIATE`` (they take the database's write
lock up front, so two writers never both read a balance and then both spend it; a second
process waits up to ``busy_timeout``), reads run a plain ``BEGIN`` (a WAL snapshot that never
blocks the writer). ``synchronous=FULL`` (the default) makes every commit durable (fsync of the
WAL); group commit (commit.py) amortises that fsync over every operation in a batch.

PostgreSQL: writes run at READ COMMITTED and lock the wallets they touch with
``SELECT ... FOR UPDATE`` (see unit.py); reads run at REPEATABLE READ so one read sees one
snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from enforcement.ledger.driver import execute

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
    # 16 MiB of page cache per connection (SQLite's default is 2 MiB): the unique indexes on
    # hashed ids take random inserts, and a small cache re-reads their pages on every batch.
    "PRAGMA cache_size=-16384",
)
SYNCHRONOUS = ("FULL", "NORMAL")


def install_sqlite_hooks(
    engine: Engine, synchronous: str = "FULL", *, autocheckpoint: bool = True
) -> None:
    """Idempotently configure a SQLite engine (pragmas and explicit BEGIN).

    ``synchronous``: FULL (default) fsyncs the WAL at every commit, so a committed operation
    survives power loss. NORMAL skips that fsync: still atomic and consistent, durable across
    process crashes, but the last commits may be lost if the machine itself crashes.
    ``autocheckpoint=False``: commits never checkpoint the WAL; something else must
    (checkpoints.WalCheckpoints, for the ledger writer)."""
    if engine.dialect.name != "sqlite" or getattr(engine, "_ledger_hooks", False):
        return
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"sqlite synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
    pragmas = (*SQLITE_PRAGMAS, f"PRAGMA synchronous={synchronous}")
    if not autocheckpoint:
        pragmas = (*pragmas, "PRAGMA wal_autocheckpoint=0")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("ledger_begin", "DEFERRED")
        # By the driver: it begins every ledger transaction (driver.py says why).
        execute(conn.connection.driver_connection, f"BEGIN {mode}")

    engine._ledger_hooks = True  # type: ignore[attr-defined]


def make_engine(
    url: str, *, sqlite_synchronous: str = "FULL", sqlite_autocheckpoint: bool = True, **kwargs: Any
) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql+psycopg://...``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:":
            raise ValueError("the ledger needs a SQLite file (sqlite:///path), not :memory:")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        kwargs.setdefault("pool_size", 8)
        kwargs.setdefault("max_overflow", 64)
        engine = create_engine(url, **kwargs)
        install_sqlite_hooks(engine, sqlite_synchronous, autocheckpoint=sqlite_autocheckpoint)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 8)
        kwargs.setdefault("max_overflow", 64)
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    raise ValueError(f"unsupported ledger database {parsed.get_backend_name()!r} in {url!r}")
