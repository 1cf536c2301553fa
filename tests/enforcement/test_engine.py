"""The engine, state and counters in process (the logic the server tests exercise over the
wire): merge rules, subscription boundaries, idempotent changes and events, SET semantics,
staleness, and that a check does no I/O."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml

from byoc_platform.events import UsageEvent
from enforcement.counters import UsageCounters
from enforcement.engine import EntitlementEngine
from enforcement.state import LocalState
from enforcement.store import Store
from enforcement.sync import SyncStatus

SEED = Path(__file__).with_name("seed.yaml")
KINDS = {
    "currencies": "currency",
    "features": "feature",
    "plans": "plan",
    "addons": "addon",
    "customers": "customer",
    "subscriptions": "subscription",
    "grants": "grant",
    "budgets": "budget",
}


def load_seed(state: LocalState) -> None:
    doc = yaml.safe_load(SEED.read_text())
    for env, sections in doc["environments"].items():
        for section, kind in KINDS.items():
            for entity in sections.get(section, []):
                state.apply(env, kind, "upsert", entity["id"], entity, 1.0)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[LocalState, UsageCounters, EntitlementEngine]:
    state = LocalState()
    load_seed(state)
    store = Store(f"sqlite:///{tmp_path / 'enf.db'}")
    counters = UsageCounters(store, state)
    return state, counters, EntitlementEngine(state, counters)


def test_plan_addon_and_override_merge(parts) -> None:  # type: ignore[no-untyped-def]
    state, _, engine = parts
    tokens = engine.check("development", "c-basic", "f-tokens")
    assert tokens.entitlement is not None and tokens.entitlement.usage_limit == 1500
    state.apply(
        "development",
        "subscription",
        "upsert",
        "s-basic",
        {
            "id": "s-basic",
            "customerId": "c-basic",
            "planId": "plan-basic",
            "addonIds": ["addon-tokens"],
            "startDate": "2025-01-01T00:00:00Z",
            "entitlements": [{"featureId": "f-seats", "numberValue": 42}],
        },
        2.0,
    )
    assert engine.check("development", "c-basic", "f-seats").entitlement.number_value == 42


def test_most_permissive_across_subscriptions(parts) -> None:  # type: ignore[no-untyped-def]
    state, _, engine = parts
    state.apply(
        "development",
        "subscription",
        "upsert",
        "s-basic-2",
        {
            "id": "s-basic-2",
            "customerId": "c-basic",
            "planId": "plan-pro",
            "startDate": "2025-01-01T00:00:00Z",
        },
        2.0,
    )
    assert engine.check("development", "c-basic", "f-sso").has_access is True
    assert engine.check("development", "c-basic", "f-seats").entitlement.number_value == 10


def test_subscription_boundaries_move_the_answer(parts) -> None:  # type: ignore[no-untyped-def]
    state, _, engine = parts
    state.apply(
        "development",
        "subscription",
        "upsert",
        "s-later",
        {
            "id": "s-later",
            "customerId": "c-nosub",
            "planId": "plan-pro",
            "startDate": "2030-01-01T00:00:00Z",
            "endDate": "2030-02-01T00:00:00Z",
        },
        2.0,
    )
    before = engine.check("development", "c-nosub", "f-sso", now=time.time())
    assert before.reason == "NoActiveSubscription"
    during = engine.check("development", "c-nosub", "f-sso", now=1893456000.0 + 60)
    assert during.has_access is True
    assert during.valid_until == 1896134400.0  # the end date: the answer changes then
    after = engine.check("development", "c-nosub", "f-sso", now=1896134400.0)
    assert after.reason == "NoActiveSubscription"


def test_applying_a_change_twice_is_harmless(parts) -> None:  # type: ignore[no-untyped-def]
    state, _, engine = parts
    change = {"id": "c-new", "name": "New"}
    state.apply("development", "customer", "upsert", "c-new", change, 3.0)
    state.apply("development", "customer", "upsert", "c-new", change, 3.0)
    assert list(state.env("development").customers).count("c-new") == 1
    state.apply("development", "customer", "delete", "c-new", {}, 4.0)
    state.apply("development", "customer", "delete", "c-new", {}, 4.0)
    assert engine.check("development", "c-new", "f-sso").reason == "CustomerNotFound"


def ev(customer: str, key: str, name: str = "api_call", **dims: float) -> UsageEvent:
    return UsageEvent(
        customerId=customer,
        eventName=name,
        idempotencyKey=key,
        timestamp=int(time.time() * 1000),
        dimensions=dims,
    )


def test_events_count_once_and_survive_a_reload(parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state, counters, engine = parts
    events = [ev("c-basic", "a"), ev("c-basic", "b"), ev("c-basic", "t", "llm.tokens", tokens=7)]
    assert counters.apply_events("development", events) == 3
    assert counters.apply_events("development", events) == 0  # redelivery
    assert engine.check("development", "c-basic", "f-calls").current_usage == 2
    assert engine.check("development", "c-basic", "f-tokens").current_usage == 7
    reloaded = UsageCounters(counters.store, state)
    reloaded.load()
    assert reloaded.values == counters.values


def test_an_identity_is_its_customer_and_key_and_counts_once_in_a_batch(parts) -> None:  # type: ignore[no-untyped-def]
    """Counted identities are looked up a batch at a time (a re-read of the retained topic
    skips them 20x faster): the same key of two customers is two events, the same identity
    twice in one batch is one, and a later batch mixing old and new counts only the new."""
    _, counters, engine = parts
    same_key = [ev("c-basic", "k"), ev("c-pro", "k"), ev("c-basic", "k")]
    assert counters.apply_events("development", same_key) == 2
    mixed = [ev("c-basic", "k"), ev("c-basic", "new"), ev("c-pro", "k"), ev("c-pro", "new")]
    assert counters.apply_events("development", mixed) == 2
    assert counters.events_replayed == 3
    assert engine.check("development", "c-basic", "f-calls").current_usage == 2
    assert engine.check("development", "c-pro", "f-calls").current_usage == 2


def test_values_beyond_the_ingestion_bound_are_left_out_not_fatal(parts) -> None:  # type: ignore[no-untyped-def]
    # Durable before ingestion refused them: +inf, then inf + -inf made the counter NULL and
    # the store refused the whole batch, for every customer, on every redelivery.
    _, counters, engine = parts
    huge = [ev("c-basic", f"p{i}", "llm.tokens", tokens=1.7e308) for i in range(2)]
    huge += [ev("c-basic", f"n{i}", "llm.tokens", tokens=-1.7e308) for i in range(2)]
    fine = [ev("c-basic", "t", "llm.tokens", tokens=7), ev("c-pro", "a")]
    assert counters.apply_events("development", huge[:2]) == 0
    assert counters.apply_events("development", huge[2:] + fine) == 2
    assert engine.check("development", "c-basic", "f-tokens").current_usage == 7
    assert engine.check("development", "c-pro", "f-calls").current_usage == 1


def test_set_then_delta(parts) -> None:  # type: ignore[no-untyped-def]
    state, counters, engine = parts
    storage = state.env("development").features["f-storage"]
    assert counters.report("development", "c-basic", None, storage, 9, "SET").current_usage == 9
    assert counters.report("development", "c-basic", None, storage, 2, "SET").current_usage == 2
    assert counters.report("development", "c-basic", None, storage, 3, "DELTA").current_usage == 5
    claimed = counters.report("development", "c-basic", None, storage, 3, "DELTA", claim="r1")
    assert claimed.current_usage == 8
    again = counters.report("development", "c-basic", None, storage, 3, "DELTA", claim="r1")
    assert again.current_usage == 8
    assert engine.check("development", "c-basic", "f-storage", requested_usage=2).has_access


def test_replay_skips_ended_windows(parts) -> None:  # type: ignore[no-untyped-def]
    _, counters, engine = parts
    old = UsageEvent(
        customerId="c-basic",
        eventName="api_call",
        idempotencyKey="old",
        timestamp=int((time.time() - 3 * 86400) * 1000),
    )
    assert counters.apply_events("development", [old], replay=True) == 0
    assert counters.apply_events("development", [old]) == 1  # live: counted in its own day
    assert engine.check("development", "c-basic", "f-calls").current_usage == 0


def test_stale_state_marks_answers_fallback(parts) -> None:  # type: ignore[no-untyped-def]
    state, counters, _ = parts
    status = SyncStatus(stale_after_s=10)
    engine = EntitlementEngine(state, counters, is_stale=lambda env: status.is_stale())
    assert engine.check("development", "c-pro", "f-sso").is_fallback is True  # never synced
    status.last_success = time.time()
    assert engine.check("development", "c-pro", "f-sso").is_fallback is False
    status.last_success = time.time() - 11  # older than the threshold
    assert engine.check("development", "c-pro", "f-sso").is_fallback is True
    status.last_success, status.last_error = time.time(), "connection refused"
    assert engine.check("development", "c-pro", "f-sso").is_fallback is True


def test_a_check_does_no_io(parts, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, counters, engine = parts
    counters.apply_events("development", [ev("c-pro", "x")])

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("I/O on the check path")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(counters.store.engine, "connect", forbidden)
    monkeypatch.setattr(counters.store.engine, "begin", forbidden)
    for feature in ("f-sso", "f-seats", "f-tier", "f-calls", "f-tokens", "f-unused"):
        engine.check("development", "c-pro", feature, requested_usage=1)
    assert engine.check("development", "c-pro", "f-calls").current_usage == 1
    assert engine.entitlements("development", "c-pro")[0] is None
