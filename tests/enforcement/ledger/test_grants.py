"""Grants: idempotent re-application, immutability, void, expiry, scheduling, payment."""

from __future__ import annotations

from decimal import Decimal

import pytest

from byoc_platform.catalog import Grant
from enforcement.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidInput,
    Ledger,
    NotFound,
)
from tests.enforcement.ledger.conftest import T0
from tests.enforcement.ledger.helpers import (
    CURRENCY,
    CUSTOMER,
    ENV,
    all_events,
    at,
    available,
    consume,
    grant,
    remaining,
)


def catalog_grant(**overrides: object) -> Grant:
    fields: dict = {
        "id": "grant-1",
        "customerId": CUSTOMER,
        "currencyId": CURRENCY,
        "amount": 25.5,
        "displayName": "Welcome credits",
        "grantType": "PROMOTIONAL",
        "priority": 10,
        "effectiveAt": "2025-01-01T00:00:00Z",
        "expireAt": "2025-02-01T00:00:00Z",
        "createdAt": "2025-01-01T00:00:00Z",
        **overrides,
    }
    return Grant(**fields)


def test_applying_the_same_catalog_grant_twice_changes_nothing(ledger: Ledger) -> None:
    first = ledger.grant(ENV, catalog_grant(), now=T0)
    again = ledger.grant(ENV, catalog_grant(), now=at(minutes=5))
    assert first.amount == again.amount == Decimal("25.5")
    assert again.status == "ACTIVE" and again.grant_type == "PROMOTIONAL"
    assert again.expire_at == at(days=31)
    assert available(ledger) == Decimal("25.5")
    assert [e.event_type for e in all_events(ledger)] == ["CREDITS_GRANTED"]
    assert ledger.balance(ENV, CUSTOMER, CURRENCY, now=T0).granted == Decimal("25.5")


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 26},
        {"customerId": "other"},
        {"currencyId": "other"},
        {"grantType": "PAID"},
        {"effectiveAt": "2025-01-02T00:00:00Z"},
        {"resourceId": "r"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_grants_cannot_be_edited(ledger: Ledger, change: dict) -> None:
    ledger.grant(ENV, catalog_grant(), now=T0)
    with pytest.raises(IdempotencyConflict, match=next(iter(change))):
        ledger.grant(ENV, catalog_grant(**change), now=T0)
    assert available(ledger) == Decimal("25.5")


def test_priority_and_expiry_updates_reorder_draws(ledger: Ledger) -> None:
    grant(ledger, "a", 10, priority=10)
    grant(ledger, "b", 10, priority=20)
    updated = grant(ledger, "b", 10, priority=5, display_name="renamed", now=at(minutes=1))
    assert (updated.priority, updated.display_name) == (5, "renamed")
    assert consume(ledger, 1, "k", now=at(minutes=2)).entries[0].grant_id == "b"
    assert [e.event_type for e in all_events(ledger)][-2:] == [
        "CREDITS_UPDATED",
        "CREDITS_CONSUMED",
    ]


def test_void_moves_the_remaining_credits_to_the_voided_sink(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    consume(ledger, 3, "k")
    voided = ledger.void_grant(ENV, "g", now=at(hours=1))
    assert (voided.status, voided.remaining, voided.consumed_amount) == ("VOIDED", 0, 3)
    assert voided.voided_at == at(hours=1)
    again = ledger.void_grant(ENV, "g", now=at(hours=2))  # harmless
    assert again.voided_at == at(hours=1)
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(hours=2))
    assert (balance.available, balance.voided, balance.consumed) == (0, 7, 3)
    assert [e.amount for e in all_events(ledger, event_types=["CREDITS_VOIDED"])] == [Decimal(-7)]
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "k2", now=at(hours=2))
    with pytest.raises(NotFound):
        ledger.void_grant(ENV, "missing")
    with pytest.raises(NotFound):
        ledger.void_grant("other-env", "g")


def test_control_plane_can_void_through_the_feed(ledger: Ledger) -> None:
    ledger.grant(ENV, catalog_grant(), now=T0)
    ledger.grant(ENV, catalog_grant(status="VOIDED"), now=at(hours=1))
    assert ledger.get_grant(ENV, "grant-1", now=at(hours=1)).status == "VOIDED"
    assert available(ledger, now=at(hours=1)) == 0


def test_expire_due_expires_what_is_left_once(ledger: Ledger) -> None:
    grant(ledger, "short", 10, expire_at=at(days=1))
    grant(ledger, "empty", 2, expire_at=at(days=1), priority=0)
    grant(ledger, "long", 10)
    consume(ledger, 6, "k")  # empty: 2, short: 4
    assert ledger.expire_due(at(hours=12)) == 0
    assert ledger.expire_due(at(days=1)) == 2
    assert ledger.expire_due(at(days=2)) == 0
    short = ledger.get_grant(ENV, "short", now=at(days=2))
    assert (short.status, short.remaining, short.consumed_amount) == ("EXPIRED", 0, 4)
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(days=2))
    assert (balance.available, balance.expired, balance.consumed, balance.granted) == (10, 6, 6, 22)
    expired = all_events(ledger, event_types=["CREDITS_EXPIRED"])
    assert [(e.grant_id, e.amount) for e in expired] == [("short", Decimal(-6))]


def test_balance_shows_expired_credits_before_the_sweep(ledger: Ledger) -> None:
    grant(ledger, "short", 10, expire_at=at(days=1))
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(days=1))
    assert (balance.available, balance.expired, balance.usage_limit) == (0, 10, 0)


def test_payment_pending_grant_is_issued_only_when_paid(ledger: Ledger) -> None:
    pending = ledger.grant(ENV, catalog_grant(status="PAYMENT_PENDING", expireAt=None), now=T0)
    assert pending.status == "PAYMENT_PENDING"
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=T0)
    assert (balance.available, balance.pending_payment, balance.granted) == (0, Decimal("25.5"), 0)
    with pytest.raises(InsufficientCredits):
        consume(ledger, 1, "k")
    ledger.grant(ENV, catalog_grant(status="PAYMENT_PENDING", expireAt=None), now=T0)
    paid = ledger.grant(ENV, catalog_grant(status="ACTIVE", expireAt=None), now=at(hours=1))
    assert paid.status == "ACTIVE"
    consume(ledger, 25, "k", now=at(hours=1))
    ledger.grant(ENV, catalog_grant(status="ACTIVE", expireAt=None), now=at(hours=2))  # no re-issue
    assert available(ledger, now=at(hours=2)) == Decimal("0.5")
    assert [e.event_type for e in all_events(ledger)] == ["CREDITS_GRANTED", "CREDITS_CONSUMED"]


def test_grant_first_seen_expired_or_voided_never_issues(ledger: Ledger) -> None:
    ledger.grant(ENV, catalog_grant(id="old", status="EXPIRED"), now=T0)
    ledger.grant(ENV, catalog_grant(id="gone", status="VOIDED"), now=T0)
    assert available(ledger) == 0
    assert ledger.get_grant(ENV, "gone", now=T0).status == "VOIDED"
    assert all_events(ledger) == []


def test_grant_arriving_after_its_expiry_expires_at_once(ledger: Ledger) -> None:
    grant(ledger, "late", 10, expire_at=at(days=1), now=at(days=2))
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(days=2))
    assert (balance.available, balance.expired, balance.granted) == (0, 10, 10)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": True}, "priority"),
        ({"grant_type": "FREE"}, "grantType"),
        ({"expire_at": T0}, "expireAt"),
        ({"effective_at": "yesterday"}, "effectiveAt"),
        ({"status": "DONE"}, "status"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_grants_are_refused(ledger: Ledger, fields: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        grant(ledger, "g", 10, **fields)


def test_wallet_total_is_capped_so_sums_stay_exact(ledger: Ledger) -> None:
    for n in range(90):
        grant(ledger, f"g{n}", 10**12)
    with pytest.raises(InvalidAmount, match="total granted"):
        grant(ledger, "one-too-many", 10**12)
    assert ledger.balance(ENV, CUSTOMER, CURRENCY, now=T0).granted == 90 * 10**12


def test_remaining_and_consumed_per_grant(ledger: Ledger) -> None:
    grant(ledger, "a", 5, priority=1)
    grant(ledger, "b", 5, priority=2)
    consume(ledger, 7, "k")
    assert (remaining(ledger, "a"), remaining(ledger, "b")) == (0, 3)
    assert ledger.get_grant(ENV, "b").consumed_amount == 2
