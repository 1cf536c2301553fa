"""Wallet states carried between the consumption batches of one SQLite connection
(commit.WalletCarry): every result is what a fresh read of the database would give, whoever
else wrote in between (another connection, another kind of operation, the clock)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from enforcement.ledger import InsufficientCredits, Ledger
from tests.enforcement.ledger.conftest import T0, sqlite_ledger
from tests.enforcement.ledger.helpers import CURRENCY, CUSTOMER, ENV, available, consume, grant


def carried(ledger: Ledger) -> int:
    return len(ledger._committer._carry._wallets)


def test_consumptions_carry_the_wallet_and_see_what_another_connection_wrote(
    sqlite_only: Ledger, tmp_path: Path
) -> None:
    ledger = sqlite_only
    grant(ledger, "g1", 10)
    consume(ledger, 4, "c1")
    consume(ledger, 1, "c2")
    assert carried(ledger) == 1  # the wallet went from one batch to the next
    other = Ledger.from_url(str(ledger.engine.url))  # another connection: e.g. the runtime's
    try:
        other.void_grant(ENV, "g1", now=T0)
        # The carried state still says 5 left; the database says the grant is void.
        with pytest.raises(InsufficientCredits):
            consume(ledger, 1, "c3")
        grant(other, "g2", 3)
        assert consume(ledger, 3, "c4").available_after == Decimal(0)
        assert consume(ledger, 3, "c4").duplicate is True  # idempotency is the database's
    finally:
        other.close()
    assert available(ledger) == Decimal(0)


def test_a_reservation_that_expires_while_carried_gives_its_credits_back(
    sqlite_only: Ledger,
) -> None:
    ledger = sqlite_only
    grant(ledger, "g1", 10)
    ledger.reserve(ENV, CUSTOMER, CURRENCY, 6, "r1", ttl_s=60, now=T0)
    consume(ledger, 4, "c1")  # the wallet, 6 of it held, is carried from here
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "c2")
    assert carried(ledger) == 1
    later = T0 + timedelta(seconds=61)  # r1's TTL passed: its hold goes back to g1
    assert consume(ledger, 5, "c3", now=later).available_after == Decimal(1)
    assert ledger.get_reservation(ENV, "r1").status == "EXPIRED"


def test_other_operations_and_grants_expiring_by_time(sqlite_only: Ledger) -> None:
    ledger = sqlite_only
    grant(ledger, "short", 5, expire_at=T0 + timedelta(hours=1))
    grant(ledger, "long", 5)
    consume(ledger, 1, "c1")  # drawn from "short" (sooner expiry first)
    assert carried(ledger) == 1
    ledger.void_grant(ENV, "long", now=T0)  # not a consumption: nothing is carried past it
    assert carried(ledger) == 0
    consume(ledger, 1, "c2")
    assert carried(ledger) == 1
    # "short" expires while carried: its 3 credits are gone, nothing else is left.
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "c3", now=T0 + timedelta(hours=2))
    assert available(ledger, now=T0 + timedelta(hours=2)) == Decimal(0)
    assert ledger.get_grant(ENV, "short", now=T0 + timedelta(hours=2)).status == "EXPIRED"


def test_postgresql_carries_nothing(ledger: Ledger) -> None:
    grant(ledger, "g1", 10)
    consume(ledger, 1, "c1")
    consume(ledger, 1, "c2")
    assert carried(ledger) == (1 if ledger.engine.dialect.name == "sqlite" else 0)


def test_a_new_connection_starts_from_the_database(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path / "l.db")
    try:
        grant(ledger, "g1", 10)
        consume(ledger, 2, "c1")
        ledger._committer._drop_connection()  # as after a failed transaction
        assert carried(ledger) == 0
        assert consume(ledger, 2, "c2").available_after == Decimal(6)
        ledger.check_invariants()
    finally:
        ledger.close()
