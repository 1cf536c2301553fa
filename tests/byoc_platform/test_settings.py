"""The one settings object: env vars, YAML file, derived endpoints, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from byoc_platform.settings import Settings


def test_defaults_are_the_local_stack_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("BYOC_")]:
        monkeypatch.delenv(name)
    s = Settings()
    assert s.host == "127.0.0.1"
    assert (s.ports.api, s.ports.grpc, s.ports.control_plane, s.ports.dagster) == (
        8080,
        8081,
        8090,
        3000,
    )
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.clickhouse.url == "http://127.0.0.1:8123"
    assert s.s3.endpoint == "http://127.0.0.1:8333"
    assert s.kms.endpoint == "http://127.0.0.1:4599"
    assert s.control_plane.api_url == "http://127.0.0.1:8090/graphql"
    assert s.data_dir == Path(".byoc").absolute()
    assert s.ledger.database_url == f"sqlite:///{s.data_dir}/ledger/ledger.db"


def test_env_vars_override_nested_values_and_endpoints_follow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BYOC_PORTS__KAFKA", "19092")
    monkeypatch.setenv("BYOC_KAFKA__PARTITIONS", "8")
    monkeypatch.setenv("BYOC_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.kafka.bootstrap == "127.0.0.1:19092"
    assert s.kafka.partitions == 8
    assert s.api_keys_file == tmp_path / "auth" / "api_keys.json"


def test_explicit_endpoint_wins_over_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_CLICKHOUSE__URL", "http://warehouse.internal:8123")
    assert Settings().clickhouse.url == "http://warehouse.internal:8123"


def test_yaml_file_is_read_and_env_still_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "byoc.yaml"
    config.write_text("environment: staging\nretention:\n  hot_days: 7\nports:\n  api: 9000\n")
    monkeypatch.setenv("BYOC_CONFIG_FILE", str(config))
    monkeypatch.setenv("BYOC_PORTS__API", "9100")
    s = Settings()
    assert (s.environment, s.retention.hot_days, s.ports.api) == ("staging", 7, 9100)


def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_KAFKA__PARTITIONS", "0")
    with pytest.raises(ValidationError, match=r"kafka\.partitions"):
        Settings()


def test_unknown_setting_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "byoc.yaml"
    config.write_text("no_such_setting: 1\n")
    monkeypatch.setenv("BYOC_CONFIG_FILE", str(config))
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings()
