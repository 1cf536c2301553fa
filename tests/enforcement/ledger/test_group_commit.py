"""Group commit: one failing operation cannot sink the others sharing its transaction, and
concurrent writes to many wallets (locked in id order) neither deadlock nor overdraw."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from byoc_platform.settings import Settings
from enforcement.ledger import InsufficientCredits, Ledger, LedgerUnavailable
from enforcement.ledger.commit import _Pending, is_transient
from enforcement.ledger.ops import ConsumeOp
from enforcement.ledger.unit import Unit
from tests.enforcement.ledger.conftest import T0
from tests.enforcement.ledger.helpers import CURRENCY, CUSTOMER, ENV, available, consume, grant
from tests.fixtures_postgres import fresh_database, postgres_server


@dataclass
class Broken:
    """An operation with a bug: it raises something that is not a LedgerError."""

    wallet_id: str
    exclusive = False

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return (self.wallet_id,)

    def prefetch_key(self) -> None:
        return None

    def apply(self, unit: Unit) -> None:
        unit.wallet(self.wallet_id, 0)
        raise RuntimeError("bug in an operation")


def consume_op(ledger: Ledger, key: str) -> ConsumeOp:
    """The operation ``ledger.consume`` would queue (built the same way)."""
    captured: list[ConsumeOp] = []

    class Capture:
        def run(self, op: ConsumeOp) -> None:
            captured.append(op)

    real, ledger._committer = ledger._committer, Capture()  # type: ignore[assignment]
    try:
        consume(ledger, 1, key)
    finally:
        ledger._committer = real
    return captured[0]


def test_a_failing_operation_does_not_sink_its_batch(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    good = [consume_op(ledger, f"k{n}") for n in range(3)]
    batch = [
        _Pending(good[0]),
        _Pending(Broken(good[0].wallet_id)),
        _Pending(good[1]),
        _Pending(good[2]),
    ]
    ledger._committer._execute(batch)
    assert [p.done for p in batch] == [True] * 4
    assert isinstance(batch[1].error, RuntimeError)
    assert [p.error for p in (batch[0], batch[2], batch[3])] == [None] * 3
    assert available(ledger) == 7  # the three good ones, once each


def test_transient_errors_are_told_apart() -> None:
    locked = OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
    assert is_transient(locked)
    duplicate = IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_transient(duplicate)
    assert not is_transient(ValueError("not a database error"))


def test_many_wallets_written_concurrently_stay_exact(ledger: Ledger) -> None:
    customers = [f"customer-{n}" for n in range(5)]
    for customer in customers:
        grant(ledger, f"g-{customer}", 40, customer_id=customer)
    spent = {customer: 0 for customer in customers}
    lock = threading.Lock()
    start = threading.Barrier(20)

    def run(n: int) -> None:
        start.wait()
        open_wallets = list(customers)
        seq = 0
        while open_wallets:
            seq += 1
            customer = open_wallets[(n + seq) % len(open_wallets)]
            try:
                ledger.consume(ENV, customer, CURRENCY, 1, f"{n}-{seq}")
            except InsufficientCredits:
                open_wallets.remove(customer)
                continue
            with lock:
                spent[customer] += 1

    threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert spent == {customer: 40 for customer in customers}
    assert all(available(ledger, customer_id=c) == 0 for c in customers)


def test_ledger_from_settings_uses_the_configured_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    ledger = Ledger.from_settings(settings)
    try:
        ledger.create_schema()
        ledger.grant(ENV, id="g", customer_id=CUSTOMER, currency_id=CURRENCY, amount=1, now=T0)
        assert (tmp_path / "ledger" / "ledger.db").exists()
        assert ledger.balance(ENV, CUSTOMER, CURRENCY, now=T0).available == 1
    finally:
        ledger.close()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="file"):
        Ledger.from_url("sqlite://")


def test_a_database_that_went_away_is_a_retryable_503_not_a_raw_error() -> None:
    """A PostgreSQL restart or fail-over reached callers as a raw OperationalError (REST 500
    for grants, reservations and releases); it is LedgerUnavailable (503, retry with the
    same key), after the committer's own retries."""
    with postgres_server() as server:
        ledger = Ledger.from_url(fresh_database(server))
        ledger.create_schema()
        grant(ledger, "g", 10)
        assert consume(ledger, 1, "k1").duplicate is False
    try:  # the server is gone now
        with pytest.raises(LedgerUnavailable, match="database failed"):
            consume(ledger, 1, "k2")
        with pytest.raises(LedgerUnavailable):
            grant(ledger, "g2", 10)
    finally:
        ledger.close()


def test_a_server_shutting_down_or_unreachable_is_transient() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    for sqlstate in ("57P01", "57P03", "08006", "23505", "40P01"):
        assert is_transient(OperationalError("COMMIT", {}, Orig(sqlstate))), sqlstate
    assert not is_transient(OperationalError("INSERT", {}, Orig("22021")))  # bad data
