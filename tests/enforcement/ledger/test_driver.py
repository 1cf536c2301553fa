"""The hot statements run by the sqlite3 driver (driver.py) give what SQLAlchemy would: the
same rows for every shape of an expanding IN, and driver errors wrapped as SQLAlchemy wraps
them (so a locked database is still retried)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import exc

from enforcement.ledger.commit import is_transient
from enforcement.ledger.driver import executemany, sqlite_driver
from enforcement.ledger.engine import make_engine
from enforcement.ledger.schema import create_schema
from enforcement.ledger.unit import BULK_CONSUMPTIONS, CONSUMPTIONS_BY_KEY, DUE_RESERVATIONS

ENV, CUSTOMER = "prod", "c1"


def _consumption(key: str, amount: int) -> dict[str, object]:
    return {
        "environment": ENV,
        "customer_id": CUSTOMER,
        "idempotency_key": key,
        "wallet_id": "w1",
        "currency_id": "credits",
        "resource_id": "",
        "amount": amount,
        "entries": "[]",
        "feature_id": None,
        "dimensions": None,
        "timestamp_us": 1,
        "recorded_us": 2,
    }


@pytest.fixture()
def conn(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.begin() as c:
        create_schema(c)
    with engine.connect() as c:
        yield c
    engine.dispose()


def test_query_rows_equal_sqlalchemy_rows_for_every_in_size(conn) -> None:  # type: ignore[no-untyped-def]
    with conn.begin():
        BULK_CONSUMPTIONS.run(conn, [_consumption(f"k{i}", i + 1) for i in range(5)])
    for keys in (["k0"], ["k1", "k3", "missing"], [f"k{i}" for i in range(5)]):
        params = {"e": ENV, "c": CUSTOMER, "keys": keys}
        with conn.begin():
            by_driver = CONSUMPTIONS_BY_KEY.rows(conn, params)
            by_sqlalchemy = conn.execute(CONSUMPTIONS_BY_KEY.statement, params).all()
        assert sorted(tuple(r) for r in by_driver) == sorted(tuple(r) for r in by_sqlalchemy)
        assert {r.idempotency_key for r in by_driver} == set(keys) - {"missing"}
        assert {r.amount for r in by_driver} == {int(k[1:]) + 1 for k in keys if k != "missing"}
    # An empty IN goes SQLAlchemy's way and still answers (nothing).
    assert CONSUMPTIONS_BY_KEY.rows(conn, {"e": ENV, "c": CUSTOMER, "keys": []}) == []


def test_query_binds_the_statements_own_literals(conn) -> None:  # type: ignore[no-untyped-def]
    # DUE_RESERVATIONS compares status with the literal 'ACTIVE' (a default parameter).
    row = {
        "environment": ENV,
        "reservation_id": "r1",
        "wallet_id": "w1",
        "customer_id": CUSTOMER,
        "currency_id": "credits",
        "resource_id": "",
        "amount": 3,
        "parts": "[]",
        "consumed": None,
        "feature_id": None,
        "metadata": None,
        "created_us": 1,
        "resolved_us": None,
    }
    with conn.begin():
        raw = sqlite_driver(conn)
        assert raw is not None
        for rid, status, expires in (
            ("r1", "ACTIVE", 10),
            ("r2", "RELEASED", 10),
            ("r3", "ACTIVE", 99),
        ):
            raw.execute(
                "INSERT INTO ledger_reservations (environment, reservation_id, wallet_id,"
                " customer_id, currency_id, resource_id, amount, parts, status, created_us,"
                " expires_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ENV, rid, "w1", CUSTOMER, "credits", "", row["amount"], "[]", status, 1, expires),
            )
        due = DUE_RESERVATIONS.rows(conn, {"w": "w1", "now": 50})
    assert [(r.reservation_id, r.status, r.expires_us) for r in due] == [("r1", "ACTIVE", 10)]


def test_driver_errors_are_wrapped_as_sqlalchemy_wraps_them(conn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with conn.begin():
        BULK_CONSUMPTIONS.run(conn, [_consumption("dup", 1)])
    with pytest.raises(exc.IntegrityError) as caught, conn.begin():
        BULK_CONSUMPTIONS.run(conn, [_consumption("dup", 2)])
    assert isinstance(caught.value.orig, sqlite3.IntegrityError)
    assert not is_transient(caught.value)
    with pytest.raises(exc.OperationalError):
        raw = sqlite_driver(conn)
        assert raw is not None
        executemany(raw, "INSERT INTO no_such_table VALUES (?)", [(1,)])

    # A write lock held elsewhere: BEGIN IMMEDIATE (by the driver, engine.py) fails with the
    # error that the committer retries.
    other = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        raw.execute("PRAGMA busy_timeout=0")  # by the driver: SQLAlchemy would begin
        with (
            pytest.raises(exc.OperationalError) as locked,
            conn.execution_options(ledger_begin="IMMEDIATE").begin(),
        ):
            pass
        assert is_transient(locked.value)
    finally:
        other.rollback()
        other.close()
