"""Consumption: all or nothing, idempotent per key, exact amounts, isolated environments."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from enforcement.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidInput,
    Ledger,
)
from enforcement.ledger.schema import consumptions, transfers
from tests.enforcement.ledger.helpers import (
    CURRENCY,
    CUSTOMER,
    ENV,
    all_events,
    at,
    available,
    consume,
    grant,
)


def count(ledger: Ledger, table) -> int:  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_same_key_twice_consumes_once(ledger: Ledger) -> None:
    grant(ledger, "g", 100)
    first = consume(ledger, 30, "key-1")
    again = consume(ledger, 30, "key-1")
    assert not first.duplicate and again.duplicate
    assert again.entries == first.entries and again.amount == Decimal(30)
    assert available(ledger) == 70
    assert ledger.balance(ENV, CUSTOMER, CURRENCY, now=at()).consumed == 30
    assert len([e for e in all_events(ledger) if e.event_type == "CREDITS_CONSUMED"]) == 1


@pytest.mark.parametrize(
    "change",
    [{"amount": 31}, {"currency_id": "other"}, {"resource_id": "r1"}],
    ids=["amount", "currency", "resource"],
)
def test_same_key_with_different_request_is_a_conflict(ledger: Ledger, change: dict) -> None:
    grant(ledger, "g", 100)
    grant(ledger, "g-other", 100, currency_id="other")
    grant(ledger, "g-r1", 100, resource_id="r1")
    consume(ledger, 30, "key-1")
    change = dict(change)  # parameters are shared between the two engines
    amount = change.pop("amount", 30)
    with pytest.raises(IdempotencyConflict, match="key-1") as error:
        consume(ledger, amount, "key-1", **change)
    assert error.value.http_status == 409
    assert count(ledger, consumptions) == 1


def test_keys_are_scoped_per_customer(ledger: Ledger) -> None:
    grant(ledger, "g1", 10)
    grant(ledger, "g2", 10, customer_id="customer-2")
    consume(ledger, 4, "shared-key")
    consume(ledger, 4, "shared-key", customer_id="customer-2")
    assert available(ledger) == 6
    assert available(ledger, customer_id="customer-2") == 6


def test_refused_consumption_writes_nothing_and_does_not_claim_its_key(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    before = (count(ledger, transfers), len(all_events(ledger)))
    with pytest.raises(InsufficientCredits) as refused:
        consume(ledger, Decimal("10.00001"), "big")
    assert refused.value.available == Decimal(10)
    assert refused.value.requested == Decimal("10.00001")
    assert (count(ledger, transfers), len(all_events(ledger))) == before
    assert count(ledger, consumptions) == 0
    grant(ledger, "top-up", 1)
    assert not consume(ledger, Decimal("10.00001"), "big").duplicate  # the key was free


def test_exactly_the_whole_balance_can_be_consumed(ledger: Ledger) -> None:
    grant(ledger, "g1", Decimal("0.1"))
    grant(ledger, "g2", Decimal("0.2"))
    assert consume(ledger, Decimal("0.3"), "all").available_after == 0  # exact, not 0.30000000004
    with pytest.raises(InsufficientCredits):
        consume(ledger, Decimal("0.00001"), "one-more")


def test_unknown_wallet_has_nothing_to_consume(ledger: Ledger) -> None:
    with pytest.raises(InsufficientCredits) as refused:
        consume(ledger, 1, "k", customer_id="nobody")
    assert refused.value.available == 0


@pytest.mark.parametrize(
    "amount",
    [
        0,
        -1,
        Decimal("-0.5"),
        float("nan"),
        float("inf"),
        Decimal("NaN"),
        10**13,
        1e15,
        "abc",
        True,
        None,
        0.000004,
        [1],
    ],
)
def test_invalid_amounts_are_refused(ledger: Ledger, amount: object) -> None:
    grant(ledger, "g", 100)
    with pytest.raises(InvalidAmount) as error:
        consume(ledger, amount, "k")
    assert error.value.http_status == 400 and "amount" in str(error.value)


def test_amounts_round_to_five_decimals_half_even(ledger: Ledger) -> None:
    grant(ledger, "g", 1)
    assert consume(ledger, 0.123456, "k1").amount == Decimal("0.12346")
    assert consume(ledger, "0.000015", "k2").amount == Decimal("0.00002")
    assert consume(ledger, "0.000025", "k3").amount == Decimal("0.00002")
    with pytest.raises(InvalidAmount, match=r"at least 0\.00001"):
        consume(ledger, "0.000005", "k4")  # rounds to zero
    assert available(ledger) == Decimal("0.87650")


def test_environments_are_isolated(ledger: Ledger) -> None:
    grant(ledger, "g", 10, environment="staging")
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "k")  # production sees nothing of staging
    grant(ledger, "g", 5)  # the same grant id in another environment is another grant
    consume(ledger, 5, "k")
    assert available(ledger) == 0
    assert available(ledger, environment="staging") == 10
    assert [e.event_type for e in all_events(ledger, environment="staging")] == ["CREDITS_GRANTED"]
    assert ledger.list_grants("staging", CUSTOMER).data[0].remaining == 10
    consume(ledger, 5, "k", environment="staging")  # same key, other environment: independent
    assert available(ledger, environment="staging") == 5


def test_resource_grants_form_their_own_wallet(ledger: Ledger) -> None:
    grant(ledger, "customer-level", 10)
    grant(ledger, "team-a", 3, resource_id="team-a")
    result = consume(ledger, 3, "k", resource_id="team-a")
    assert [e.grant_id for e in result.entries] == ["team-a"]
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "k2", resource_id="team-a")
    assert available(ledger) == 10
    assert available(ledger, resource_id="team-a") == 0


def test_expired_grant_is_never_drawn_even_before_expire_due(ledger: Ledger) -> None:
    grant(ledger, "short", 10, expire_at=at(hours=1), priority=0)
    grant(ledger, "long", 10)
    result = consume(ledger, 5, "k", now=at(hours=2))
    assert [e.grant_id for e in result.entries] == ["long"]
    with pytest.raises(InsufficientCredits):
        consume(ledger, 6, "k2", now=at(hours=2))
    assert ledger.get_grant(ENV, "short", now=at(hours=2)).status == "EXPIRED"


def test_scheduled_grant_becomes_drawable_when_effective(ledger: Ledger) -> None:
    grant(ledger, "later", 10, effective_at=at(days=1))
    assert ledger.get_grant(ENV, "later", now=at()).status == "SCHEDULED"
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at())
    assert (balance.available, balance.scheduled) == (0, 10)
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "k")
    assert consume(ledger, 1, "k", now=at(days=1)).entries[0].grant_id == "later"
    assert ledger.get_grant(ENV, "later", now=at(days=1)).status == "ACTIVE"


def test_feature_and_dimensions_are_recorded(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    consume(
        ledger,
        1,
        "k",
        feature_id="gpt-tokens",
        dimensions={"model": "x", "n": 3, "ok": True},
        created_at="2024-12-31T23:00:00Z",
    )
    event = all_events(ledger, event_types=["CREDITS_CONSUMED"])[0]
    assert event.feature_id == "gpt-tokens"
    assert event.to_api()["timestamp"] == "2024-12-31T23:00:00Z"
    with pytest.raises(InvalidInput, match="dimensions"):
        consume(ledger, 1, "k2", dimensions={"bad": [1]})


def test_naive_times_and_bad_ids_are_refused(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    with pytest.raises(InvalidInput, match="timezone"):
        consume(ledger, 1, "k", now=at().replace(tzinfo=None))
    with pytest.raises(InvalidInput, match="idempotencyKey"):
        consume(ledger, 1, "")
    with pytest.raises(InvalidInput, match="customerId"):
        consume(ledger, 1, "k", customer_id="x" * 256)
