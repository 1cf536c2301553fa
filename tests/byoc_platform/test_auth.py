"""API keys belong to one environment and are stored only as hashes."""

from __future__ import annotations

from pathlib import Path

from byoc_platform.auth import KeyStore, hash_key


def test_key_resolves_to_its_environment_and_is_stored_hashed(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key_a = store.create("env-a")
    key_b = store.create("env-b")
    assert store.environment_of(key_a) == "env-a"
    assert store.environment_of(key_b) == "env-b"
    text = (tmp_path / "keys.json").read_text()
    assert key_a not in text and key_b not in text
    assert hash_key(key_a) in text
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_unknown_missing_and_revoked_keys_are_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("env-a")
    assert store.environment_of(None) is None
    assert store.environment_of("") is None
    assert store.environment_of(key + "x") is None
    record = store.records()[0]
    assert store.revoke(record.key_id)
    assert store.environment_of(key) is None
    assert not store.revoke(record.key_id)


def test_a_second_process_sees_new_keys(tmp_path: Path) -> None:
    reader = KeyStore(tmp_path / "keys.json")
    assert reader.environment_of("byoc_nothing") is None
    key = KeyStore(tmp_path / "keys.json").create("env-c")
    assert reader.environment_of(key) == "env-c"
