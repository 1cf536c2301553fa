"""Fixtures of the ledger tests: a fresh ledger on SQLite (WAL file) and on a real PostgreSQL.

``ledger`` is parametrized over both engines; every test ends by checking the books
(``check_invariants``), so each behaviour is also proven to keep double entry intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcement.ledger import Ledger
from tests.fixtures_postgres import fresh_database, postgres_server

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> tuple[str, str]:
    """A database holding the ledger schema, copied for each test (CREATE DATABASE TEMPLATE)."""
    url = fresh_database(pg_server)
    ledger = Ledger.from_url(url)
    ledger.create_schema()
    ledger.close()
    return pg_server, url.rsplit("/", 1)[1]


def sqlite_ledger(path: Path) -> Ledger:
    ledger = Ledger.from_url(f"sqlite:///{path}")
    ledger.create_schema()
    return ledger


def postgres_ledger(template: tuple[str, str]) -> Ledger:
    server, name = template
    ledger = Ledger.from_url(fresh_database(server, template=name))
    ledger.create_schema()  # idempotent: proves re-running it on an existing schema is harmless
    return ledger


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        instance = sqlite_ledger(tmp_path / "ledger.db")
    else:
        instance = postgres_ledger(request.getfixturevalue("pg_template"))
    try:
        yield instance
        instance.check_invariants()
    finally:
        instance.close()


@pytest.fixture
def sqlite_only(tmp_path: Path) -> Iterator[Ledger]:
    instance = sqlite_ledger(tmp_path / "ledger.db")
    try:
        yield instance
        instance.check_invariants()
    finally:
        instance.close()
