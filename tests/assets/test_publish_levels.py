"""The plan of SET levels (pure logic; the real path is in test_reported_usage.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from assets.publish.ledger import Entry, idempotency_key
from assets.publish.levels import KEY_PREFIX, plan_levels

HOUR = datetime(2025, 6, 1, 13, tzinfo=UTC)
SEATS = ("env", "cust", "", "feature-seats")
OTHER = ("env", "cust-2", "", "feature-seats")


def _entry(revision: int, level: float, status: str = "sent", key=SEATS) -> Entry:
    return Entry(
        *key,
        hour=HOUR,
        revision=revision,
        delta=level,
        total=level,
        idempotency_key=idempotency_key(key, HOUR, revision, KEY_PREFIX),
        status=status,
        behavior="SET",
    )


def test_a_level_is_sent_once_as_set_and_a_changed_one_as_a_new_revision():
    first = plan_levels(HOUR, {SEATS: 9.0}, [], set())
    [entry] = first.new
    assert (entry.revision, entry.delta, entry.behavior) == (0, 9.0, "SET")
    assert entry.idempotency_key.startswith("byoc-level:20250601T13:")
    assert entry.idempotency_key != idempotency_key(SEATS, HOUR, 0)  # not a DELTA's key

    again = plan_levels(HOUR, {SEATS: 9.0}, [_entry(0, 9.0)], set())
    assert again.to_send == [] and again.unchanged == 1

    changed = plan_levels(HOUR, {SEATS: 4.0}, [_entry(0, 9.0)], set())
    assert [(e.revision, e.delta) for e in changed.new] == [(1, 4.0)]


def test_a_pending_level_is_resent_with_its_key_or_replaced_by_a_newer_one():
    pending = _entry(0, 9.0, status="pending")
    resend = plan_levels(HOUR, {SEATS: 9.0}, [pending], set())
    assert resend.resend == [pending] and resend.new == [] and resend.replaced == []

    newer = plan_levels(HOUR, {SEATS: 5.0}, [pending], set())
    assert [(e.revision, e.delta) for e in newer.new] == [(1, 5.0)]
    assert newer.replaced == [pending] and newer.resend == []  # never sent after the newer


def test_a_later_hour_s_set_supersedes_the_hour_s_level():
    pending = _entry(0, 9.0, status="pending")
    plan = plan_levels(HOUR, {SEATS: 9.0, OTHER: 2.0}, [pending], {SEATS})
    assert [e.key for e in plan.to_send] == [OTHER]
    assert plan.superseded == 1 and plan.replaced == [pending]
