"""The publish plan and idempotency keys (pure logic; the real path is in test_publish.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from assets.publish.ledger import Entry, idempotency_key, plan
from assets.publish.sender import bulks

HOUR = datetime(2025, 6, 1, 13, tzinfo=UTC)
KEY = ("env", "cust", "", "feature-tokens")


def _entry(revision: int, delta: float, status: str = "sent", key=KEY) -> Entry:
    return Entry(
        *key,
        hour=HOUR,
        revision=revision,
        delta=delta,
        total=0.0,
        idempotency_key=idempotency_key(key, HOUR, revision),
        status=status,
    )


def test_idempotency_keys_are_deterministic_per_key_hour_and_revision():
    assert idempotency_key(KEY, HOUR, 0) == idempotency_key(KEY, HOUR, 0)
    others = {
        idempotency_key(KEY, HOUR, 1),
        idempotency_key(("env", "cust", "team", "feature-tokens"), HOUR, 0),
        idempotency_key(("env2", "cust", "", "feature-tokens"), HOUR, 0),
        idempotency_key(KEY, HOUR.replace(hour=14), 0),
        # Separators inside ids cannot make two keys collide.
        idempotency_key(("env", "cust\x1f", "", "feature-tokens"), HOUR, 0),
    }
    assert idempotency_key(KEY, HOUR, 0) not in others and len(others) == 5
    assert idempotency_key(KEY, HOUR, 0).startswith("byoc-rollup:20250601T13:")


def test_first_publish_sends_revision_zero_with_the_whole_value():
    todo = plan(HOUR, {KEY: 120.0}, [])
    assert [(e.revision, e.delta, e.total) for e in todo.new] == [(0, 120.0, 120.0)]
    assert todo.resend == [] and todo.unchanged == 0


def test_unchanged_hour_sends_nothing():
    todo = plan(HOUR, {KEY: 120.0}, [_entry(0, 100.0), _entry(1, 20.0)])
    assert todo.to_send == [] and todo.unchanged == 1


def test_changed_hour_sends_the_difference_under_the_next_revision():
    todo = plan(HOUR, {KEY: 150.0}, [_entry(0, 100.0), _entry(1, 20.0)])
    [new] = todo.new
    assert (new.revision, new.delta, new.total) == (2, 30.0, 150.0)
    assert new.idempotency_key == idempotency_key(KEY, HOUR, 2)


def test_a_key_gone_from_the_rollup_is_brought_back_to_zero():
    todo = plan(HOUR, {}, [_entry(0, 100.0)])
    [new] = todo.new
    assert (new.revision, new.delta, new.total) == (1, -100.0, 0.0)


def test_pending_revisions_are_resent_and_counted_as_published():
    pending = _entry(0, 100.0, status="pending")
    todo = plan(HOUR, {KEY: 100.0}, [pending])
    assert todo.resend == [pending] and todo.new == []


def test_bulks_respect_the_size_and_hold_one_environment():
    entries = [_entry(0, 1.0, key=(f"env{i % 2}", f"c{i}", "", "f")) for i in range(23)]
    out = bulks(entries, 5)
    assert all(len(b) <= 5 for b in out)
    assert all(len({e.environment for e in b}) == 1 for b in out)
    assert sorted(e.idempotency_key for b in out for e in b) == sorted(
        e.idempotency_key for e in entries
    )
    assert len(out) == 3 + 3  # 12 and 11 entries per environment
