"""Grants are drawn in Stigg's order: priority, sooner expiry, promotional before paid, earlier
effectiveAt, earlier createdAt. Each test pits two grants that differ in ONE field, with the
grant expected first created second and given the greater id, so neither insertion order nor
the id tie-break can explain the outcome."""

from __future__ import annotations

from decimal import Decimal

import pytest

from enforcement.ledger import Ledger
from tests.enforcement.ledger.helpers import all_events, at, consume, grant, remaining


def drawn_first(ledger: Ledger, later: dict, first: dict) -> str:
    grant(ledger, "a-later", 10, **later)
    grant(ledger, "z-first", 10, **first)
    result = consume(ledger, 4, "k", now=at(days=2))
    assert len(result.entries) == 1
    return result.entries[0].grant_id


@pytest.mark.parametrize(
    ("later", "first"),
    [
        pytest.param({"priority": 60}, {"priority": 40}, id="lower-priority-first"),
        pytest.param(
            {"expire_at": at(days=30)}, {"expire_at": at(days=10)}, id="sooner-expiry-first"
        ),
        pytest.param({}, {"expire_at": at(days=300)}, id="expiring-before-never-expiring"),
        pytest.param(
            {"grant_type": "PAID"}, {"grant_type": "PROMOTIONAL"}, id="promotional-before-paid"
        ),
        pytest.param(
            {"effective_at": at(days=1)}, {"effective_at": at(hours=1)}, id="earlier-effective"
        ),
        pytest.param(
            {"created_at": at(hours=5)}, {"created_at": at(hours=2)}, id="earlier-created"
        ),
    ],
)
def test_each_tie_breaker_decides_the_draw(ledger: Ledger, later: dict, first: dict) -> None:
    assert drawn_first(ledger, later, first) == "z-first"


def test_priority_outranks_every_later_criterion(ledger: Ledger) -> None:
    # The favoured grant loses every later tie-breaker but has the lower priority.
    first = {
        "priority": 10,
        "grant_type": "PAID",
        "effective_at": at(days=1),
        "created_at": at(days=1),
    }
    later = {"priority": 20, "grant_type": "PROMOTIONAL", "expire_at": at(days=3)}
    assert drawn_first(ledger, later, first) == "z-first"


def test_a_consumption_spanning_grants_writes_one_entry_per_grant(ledger: Ledger) -> None:
    grant(ledger, "g3", 30, priority=30)
    grant(ledger, "g1", 10, priority=10)
    grant(ledger, "g2", 20, priority=20)
    result = consume(ledger, Decimal("35.5"), "span")
    assert [(e.grant_id, e.amount) for e in result.entries] == [
        ("g1", Decimal(10)),
        ("g2", Decimal(20)),
        ("g3", Decimal("5.5")),
    ]
    assert remaining(ledger, "g3") == Decimal("24.5")
    consumed = [e for e in all_events(ledger) if e.event_type == "CREDITS_CONSUMED"]
    assert [(e.grant_id, e.amount) for e in consumed] == [
        ("g1", Decimal(-10)),
        ("g2", Decimal(-20)),
        ("g3", Decimal("-5.5")),
    ]


def test_exhausted_grants_are_skipped_and_order_continues(ledger: Ledger) -> None:
    grant(ledger, "first", 5, priority=1)
    grant(ledger, "second", 5, priority=2)
    grant(ledger, "third", 5, priority=3)
    assert [e.grant_id for e in consume(ledger, 5, "a").entries] == ["first"]
    assert [e.grant_id for e in consume(ledger, 6, "b").entries] == ["second", "third"]
    assert remaining(ledger, "third") == 4
