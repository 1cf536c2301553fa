from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from byoc_platform.catalog import Feature
from byoc_platform.control_plane.seed import DEFAULT_SEED, EntityError, read_entities_file
from byoc_platform.control_plane.store import Upsert
from tests.byoc_platform.control_plane.cp_harness import ControlPlaneProcess


def _seed_entities() -> dict[str, dict[str, Any]]:
    batches, _ = read_entities_file(DEFAULT_SEED)
    assert list(batches) == ["development"]
    out: dict[str, dict[str, Any]] = {}
    for op in batches["development"]:
        assert isinstance(op, Upsert)
        out.setdefault(op.kind, {})[op.entity.id] = op.entity
    return out


def test_default_seed_is_a_consistent_ai_saas_catalog() -> None:
    e = _seed_entities()
    features = e["feature"]
    tokens = features["feature-gpt-tokens"]
    assert isinstance(tokens, Feature) and tokens.meter is not None
    assert (tokens.meter.eventName, tokens.meter.aggregation, tokens.meter.field) == (
        "llm.tokens",
        "SUM",
        "tokens",
    )
    calls = features["feature-api-calls"]
    assert calls.meter.eventName == "api_call" and calls.meter.aggregation == "COUNT"
    assert features["feature-sso"].featureType == "BOOLEAN"
    assert features["feature-seats"].featureType == "NUMBER"
    tier = features["feature-model-tier"]
    assert tier.featureType == "ENUM" and len(tier.enumValues) >= 2
    credit_priced = [f for f in features.values() if f.creditCurrencyId]
    assert credit_priced and all(f.creditCurrencyId in e["currency"] for f in credit_priced)
    assert "credits" in e["currency"]
    assert {"plan-free", "plan-pro"} <= set(e["plan"])
    assert 2 <= len(e["customer"]) <= 3 and e["grant"] and len(e["budget"]) == 1

    # Every reference points at an entity of the seed.
    for plan in [*e["plan"].values(), *e["addon"].values()]:
        for ent in plan.entitlements:
            assert ent.featureId in features
    for sub in e["subscription"].values():
        assert sub.customerId in e["customer"] and sub.planId in e["plan"]
        assert all(a in e["addon"] for a in sub.addonIds)
    for grant in e["grant"].values():
        assert grant.customerId in e["customer"]
        assert grant.currencyId in e["currency"]
    for budget in e["budget"].values():
        assert budget.customerId in e["customer"] and budget.featureId in features
    assert all(
        c.id in {s.customerId for s in e["subscription"].values()} for c in e["customer"].values()
    )


def test_seed_loads_once_and_survives_restarts(fresh_cp: ControlPlaneProcess) -> None:
    expected = sum(len(v) for v in _seed_entities().values())
    with fresh_cp.client() as c:
        first = c.changes("development", 0, 5000)
        assert [ch.seq for ch in first.changes] == list(range(1, expected + 1))
        assert all(ch.op == "upsert" for ch in first.changes)
        assert not first.hasMore and first.cursor == expected
        c.put_entity("development", Feature(id="feature-extra", featureType="BOOLEAN"))

    fresh_cp.restart()
    with fresh_cp.client() as c:
        again = c.changes("development", 0, 5000)
        # Not re-seeded (no duplicates), not reset (the admin write is still there).
        assert again.changes[:expected] == first.changes
        assert [ch.id for ch in again.changes[expected:]] == ["feature-extra"]
        assert again.cursor == expected + 1
        change = c.put_entity("development", Feature(id="feature-extra-2"))
        assert change.seq == expected + 2  # seq keeps increasing across restarts
    assert "seed loaded" in fresh_cp.log()
    assert "already seeded" in fresh_cp.log()


def test_seed_option_is_used_on_first_start_only(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "environments:\n  staging:\n    features:\n      - {id: feature-x, featureType: BOOLEAN}\n"
    )
    cp = ControlPlaneProcess(tmp_path / "cp", seed=seed).start()
    try:
        with cp.client() as c:
            assert [ch.id for ch in c.changes("staging").changes] == ["feature-x"]
            assert c.changes("development").changes == []
        cp.seed = None  # a restart with the default seed must not seed a seeded store again
        cp.restart()
        with cp.client() as c:
            assert c.changes("development").changes == []
            assert len(c.changes("staging").changes) == 1
    finally:
        cp.stop()


def test_invalid_seed_fails_startup_naming_the_field(tmp_path: Path) -> None:
    seed = tmp_path / "bad.yaml"
    seed.write_text(
        "environments:\n  development:\n    plans:\n"
        "      - {id: plan-x, entitlements: [{featureId: f, usageLimt: 3}]}\n"
    )
    cp = ControlPlaneProcess(tmp_path / "cp", seed=seed)
    with pytest.raises(RuntimeError, match=r"exited 2") as info:
        cp.start()
    assert "usageLimt" in str(info.value) and "plans[0]" in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("features: []\n", "top-level key `environments`"),
        ("environments:\n  dev:\n    widgets: []\n", "unknown section"),
        ("environments:\n  dev:\n    features:\n      - {id: a}\n      - {id: a}\n", "duplicate"),
        ("environments:\n  dev:\n    features:\n      - {featureType: BOOLEAN}\n", "`id`"),
        (
            "environments:\n  dev:\n    grants:\n      - {id: g, customerId: c, currencyId: x,"
            " amount: 1, effectiveAt: soon, createdAt: '2025-01-01T00:00:00Z'}\n",
            "effectiveAt",
        ),
        ("environments:\n  'bad env!':\n    features: []\n", "invalid environment id"),
    ],
)
def test_entities_file_errors_name_what_is_wrong(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(EntityError) as info:
        read_entities_file(path)
    assert needle in str(info.value)
