"""The books defend themselves: append-only history, one posting per transfer id, no overdraft
even for a direct write, and ``check_invariants`` catching any tampering."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from enforcement.ledger import InvariantViolation, Ledger
from enforcement.ledger.schema import transfers
from tests.enforcement.ledger.helpers import consume, grant


def populated(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    consume(ledger, 3, "k")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_transfers SET amount = amount + 1",
        "DELETE FROM ledger_transfers",
        "UPDATE ledger_events SET amount = 0",
        "DELETE FROM ledger_events",
        "UPDATE ledger_consumptions SET amount = 1",
        "DELETE FROM ledger_consumptions",
    ],
)
def test_history_is_append_only(ledger: Ledger, statement: str) -> None:
    populated(ledger)
    with pytest.raises(DBAPIError, match="append-only"), ledger.engine.begin() as conn:
        conn.execute(text(statement))


def test_a_transfer_id_posts_once(ledger: Ledger) -> None:
    populated(ledger)
    with ledger.engine.connect() as conn:
        row = dict(conn.execute(transfers.select().limit(1)).mappings().one())
    with pytest.raises(IntegrityError), ledger.engine.begin() as conn:
        conn.execute(transfers.insert(), row)


def test_the_database_refuses_an_overdraft_even_from_a_direct_write(ledger: Ledger) -> None:
    populated(ledger)
    overdraw = "UPDATE ledger_accounts SET debits_posted = credits_posted + 1 WHERE kind = 'grant'"
    with (
        pytest.raises(IntegrityError, match="debits_must_not_exceed_credits"),
        ledger.engine.begin() as conn,
    ):
        conn.execute(text(overdraw))


@pytest.mark.parametrize(
    ("statement", "finding"),
    [
        (
            "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 "
            "WHERE kind = 'consumed'",
            "transfers sum to",
        ),
        ("UPDATE ledger_grants SET consumed = consumed + 1", "cached consumed"),
        ("UPDATE ledger_reservations SET status = 'RELEASED'", "resolved 0 of its hold"),
    ],
)
def test_check_invariants_detects_tampering(ledger: Ledger, statement: str, finding: str) -> None:
    populated(ledger)
    ledger.reserve("production", "customer-1", "credits", 2, "r", ttl_s=60)
    ledger.check_invariants()
    with ledger.engine.begin() as conn:
        conn.execute(text(statement))
    with pytest.raises(InvariantViolation, match=finding):
        ledger.check_invariants()
    with ledger.engine.begin() as conn:  # undo, so the fixture's final check passes
        conn.execute(text(statement.replace("+ 1", "- 1").replace("'RELEASED'", "'ACTIVE'")))
