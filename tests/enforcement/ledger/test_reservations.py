"""Reservations: hold on check, release once, give back to the same grants, expire by TTL."""

from __future__ import annotations

from decimal import Decimal

import pytest

from enforcement.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidInput,
    Ledger,
    NotFound,
    ReservationAlreadyResolved,
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


def reserve(ledger: Ledger, amount: object, rid: str, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("now", T0)
    kw.setdefault("ttl_s", 600)
    env = kw.pop("environment", ENV)
    return ledger.reserve(env, CUSTOMER, CURRENCY, amount, rid, **kw)  # type: ignore[arg-type]


def test_reserve_holds_credits_per_grant_in_draw_order(ledger: Ledger) -> None:
    grant(ledger, "a", 30, priority=10)
    grant(ledger, "b", 100, priority=20)
    held = reserve(ledger, 50, "r1", metadata={"run": "42"})
    assert [(e.grant_id, e.amount) for e in held.entries] == [("a", 30), ("b", 20)]
    assert (held.status, held.expires_at, held.available_after) == ("ACTIVE", at(minutes=10), 80)
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=T0)
    assert (balance.available, balance.reserved, balance.usage_limit, balance.current_usage) == (
        80,
        50,
        130,
        50,
    )
    events = all_events(ledger, event_types=["CREDITS_RESERVED"])
    assert [(e.grant_id, e.amount, e.metadata) for e in events] == [
        ("a", -30, {"run": "42"}),
        ("b", -20, {"run": "42"}),
    ]


def test_release_charges_the_holds_and_returns_the_rest_to_the_same_grants(ledger: Ledger) -> None:
    grant(ledger, "a", 30, priority=10)
    grant(ledger, "b", 100, priority=20)
    reserve(ledger, 50, "r1")  # a: 30 held, b: 20 held
    consume(ledger, 10, "k")  # from b (a is fully held)
    released = ledger.release(ENV, "r1", 35, now=at(minutes=1))
    assert [(e.grant_id, e.amount) for e in released.consumed_entries] == [("a", 30), ("b", 5)]
    assert (released.returned_amount, released.available_after) == (15, 85)
    assert released.reservation.status == "RELEASED"
    assert released.reservation.consumed_amount == 35
    assert (remaining(ledger, "a"), remaining(ledger, "b")) == (0, 85)
    assert ledger.get_grant(ENV, "b").consumed_amount == 15
    event = all_events(ledger, event_types=["CREDITS_RESERVATION_RELEASED"])[0]
    assert (event.amount, event.hold_returned_amount, event.reservation_id) == (15, 50, "r1")
    assert [(i["creditGrantId"], i["amount"]) for i in event.breakdown or []] == [
        ("a", -30),
        ("b", -5),
    ]
    assert event.to_api()["breakdown"][0]["eventType"] == "CREDITS_CONSUMED"


def test_release_with_nothing_consumed_returns_everything(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 4, "r")
    assert ledger.release(ENV, "r", 0, now=T0).returned_amount == 4
    assert available(ledger) == 10


def test_a_reservation_resolves_exactly_once(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 4, "r")
    ledger.release(ENV, "r", 1, now=T0)
    with pytest.raises(ReservationAlreadyResolved, match="already released") as error:
        ledger.release(ENV, "r", 1, now=T0)
    assert (error.value.status, error.value.http_status) == ("RELEASED", 409)
    assert available(ledger) == 9


def test_release_above_the_hold_consumes_the_excess_normally(ledger: Ledger) -> None:
    grant(ledger, "a", 10, priority=1)
    grant(ledger, "b", 10, priority=2)
    reserve(ledger, 5, "r")  # from a
    released = ledger.release(ENV, "r", 12, now=T0)  # 5 held + 7 drawn: a 5, then b 2
    assert [(e.grant_id, e.amount) for e in released.consumed_entries] == [
        ("a", 5),
        ("a", 5),
        ("b", 2),
    ]
    assert available(ledger) == 8
    event = all_events(ledger, event_types=["CREDITS_RESERVATION_RELEASED"])[0]
    assert event.amount == -7  # net effect: more consumed than was held


def test_release_whose_excess_cannot_be_covered_is_refused_and_stays_open(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 5, "r")
    with pytest.raises(InsufficientCredits):
        ledger.release(ENV, "r", Decimal("10.00001"), now=T0)
    assert ledger.get_reservation(ENV, "r").status == "ACTIVE"
    assert ledger.release(ENV, "r", 10, now=T0).available_after == 0


def test_reservation_cannot_overdraw(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 6, "r1")
    with pytest.raises(InsufficientCredits) as refused:
        reserve(ledger, 5, "r2")
    assert refused.value.available == 4
    with pytest.raises(InsufficientCredits):
        consume(ledger, 5, "k")
    with pytest.raises(NotFound):
        ledger.get_reservation(ENV, "r2")


def test_same_reservation_id_is_idempotent_and_conflicts_on_change(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    first = reserve(ledger, 4, "r")
    again = reserve(ledger, 4, "r", now=at(seconds=5))
    assert again.duplicate and again.expires_at == first.expires_at
    assert available(ledger) == 6
    with pytest.raises(IdempotencyConflict, match="reservationId 'r'"):
        reserve(ledger, 5, "r")


def test_ttl_expiry_releases_with_nothing_consumed(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 4, "r", ttl_s=60)
    assert ledger.expire_due(at(seconds=59)) == 0
    assert ledger.expire_due(at(seconds=60)) == 1
    assert available(ledger, now=at(seconds=60)) == 10
    expired = ledger.get_reservation(ENV, "r")
    assert (expired.status, expired.consumed_amount, expired.to_api()["status"]) == (
        "EXPIRED",
        0,
        "RELEASED",
    )
    with pytest.raises(ReservationAlreadyResolved, match="expired"):
        ledger.release(ENV, "r", 1, now=at(seconds=61))
    event = all_events(ledger, event_types=["CREDITS_RESERVATION_EXPIRED"])[0]
    assert (event.amount, event.hold_returned_amount) == (4, 4)


def test_release_after_the_ttl_is_refused_even_before_the_sweep(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 4, "r", ttl_s=60)
    with pytest.raises(ReservationAlreadyResolved) as error:
        ledger.release(ENV, "r", 4, now=at(seconds=61))
    assert error.value.status == "EXPIRED"
    assert available(ledger, now=at(seconds=61)) == 10


def test_overdue_holds_are_returned_by_the_next_write_on_the_wallet(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 8, "r", ttl_s=60)
    assert consume(ledger, 9, "k", now=at(minutes=2)).available_after == 1
    assert ledger.get_reservation(ENV, "r").status == "EXPIRED"


def test_holds_of_a_grant_that_expires_meanwhile_go_to_the_expired_sink(ledger: Ledger) -> None:
    grant(ledger, "short", 10, expire_at=at(minutes=5), priority=0)
    grant(ledger, "long", 10)
    reserve(ledger, 6, "r", ttl_s=3600)  # all from "short"
    assert ledger.expire_due(at(minutes=5)) == 1  # short's free 4 expire, its hold stays
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(minutes=6))
    assert (balance.reserved, balance.reserved_on_inactive_grants, balance.expired) == (0, 6, 4)
    released = ledger.release(ENV, "r", 2, now=at(minutes=6))
    assert released.returned_amount == 0  # the unused 4 cannot go back to an expired grant
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(minutes=6))
    assert (balance.available, balance.expired, balance.consumed) == (10, 8, 2)
    breakdown = all_events(ledger, event_types=["CREDITS_RESERVATION_RELEASED"])[0].breakdown
    assert [(i["eventType"], i["amount"]) for i in breakdown or []] == [
        ("CREDITS_CONSUMED", -2),
        ("CREDITS_EXPIRED", -4),
    ]


def test_holds_of_a_voided_grant_go_to_the_voided_sink(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 6, "r")
    ledger.void_grant(ENV, "g", now=at(minutes=1))
    ledger.release(ENV, "r", 1, now=at(minutes=2))
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY, now=at(minutes=2))
    assert (balance.available, balance.voided, balance.consumed, balance.reserved) == (0, 9, 1, 0)


def test_unknown_or_foreign_reservations_are_not_found(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    reserve(ledger, 1, "r")
    with pytest.raises(NotFound):
        ledger.release(ENV, "nope", 1, now=T0)
    with pytest.raises(NotFound):
        ledger.release("staging", "r", 1, now=T0)
    with pytest.raises(NotFound, match="customer"):
        ledger.release(ENV, "r", 1, customer_id="customer-2", now=T0)
    ledger.release(ENV, "r", 1, customer_id=CUSTOMER, currency_id=CURRENCY, now=T0)


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"ttl_s": 0}, InvalidInput),
        ({"ttl_s": 86_401}, InvalidInput),
        ({"ttl_s": True}, InvalidInput),
        ({"ttl_s": None, "expires_at": at(hours=25)}, InvalidInput),
        ({"ttl_s": None, "expires_at": T0}, InvalidInput),
        ({"ttl_s": 10, "expires_at": at(hours=1)}, InvalidInput),
        ({"metadata": {"n": 1}}, InvalidInput),
    ],
)
def test_invalid_reservations_are_refused(ledger: Ledger, kw: dict, error: type) -> None:
    grant(ledger, "g", 10)
    with pytest.raises(error):
        reserve(ledger, 1, "r", **kw)
    with pytest.raises(InvalidAmount):
        reserve(ledger, 0, "r")
    reserve(ledger, 1, "r2")
    with pytest.raises(InvalidAmount, match="consumedAmount"):
        ledger.release(ENV, "r2", -1, now=T0)


def test_expires_at_may_replace_the_ttl(ledger: Ledger) -> None:
    grant(ledger, "g", 10)
    held = reserve(ledger, 1, "r", ttl_s=None, expires_at="2025-01-01T01:00:00Z")
    assert held.expires_at == at(hours=1)
    default = reserve(ledger, 1, "r-default", ttl_s=None)
    assert default.expires_at == at(hours=1)  # 3600 s by default
