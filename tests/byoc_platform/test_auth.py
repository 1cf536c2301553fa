"""API keys belong to one environment and are stored only as hashes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byoc_platform.auth import KeyFileError, KeyStore, hash_key


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


def test_a_bad_edit_of_the_key_file_keeps_the_keys_in_force_and_blocks_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    runtime = KeyStore(path)
    key = KeyStore(path).create("env-a")
    assert runtime.environment_of(key) == "env-a"
    text = path.read_text()
    path.write_text(text[:-5])  # a hand edit cut short
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new version, whatever the clock
    # The runtime answers with the keys it read before (not an error per request) ...
    assert runtime.environment_of(key) == "env-a"
    assert runtime.environment_of(key + "x") is None
    # ... and nothing writes over the file: its keys would be lost.
    with pytest.raises(KeyFileError, match="not a valid key file"):
        KeyStore(path).create("env-b")
    assert path.read_text() == text[:-5]
    done = subprocess.run(
        [sys.executable, "-m", "byoc_platform", "keys", "list", "--data-dir", str(tmp_path)],
        env={**os.environ, "BYOC_API_KEYS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "not a valid key file" in done.stderr
    assert "Traceback" not in done.stderr
    path.write_text(text)  # mended: read again
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert [r.environment for r in KeyStore(path).records()] == ["env-a"]


@pytest.mark.parametrize("environment", ["team/prod", "qa env", "", " dev", "-dev", "é", "x" * 129])
def test_an_environment_id_outside_the_rule_gets_no_key(tmp_path: Path, environment: str) -> None:
    """An id with '/' split the archive layout, and one the control plane refuses failed the
    rollup of every environment of its hours (F72): refused where keys are made."""
    store = KeyStore(tmp_path / "keys.json")
    with pytest.raises(ValueError, match="invalid environment id"):
        store.create(environment)
    assert store.records() == []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "byoc_platform",
            "keys",
            "create",
            "--environment",
            environment,
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--environment: invalid environment id" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_environment_ids_within_the_rule_get_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    for environment in ("development", "prod-eu.1", "Team_A", "x" * 128):
        assert store.environment_of(store.create(environment)) == environment


def test_the_settings_refuse_an_environment_outside_the_rule() -> None:
    from pydantic import ValidationError

    from byoc_platform.settings import Settings

    with pytest.raises(ValidationError, match="invalid environment id 'team/prod'"):
        Settings(environment="team/prod")
