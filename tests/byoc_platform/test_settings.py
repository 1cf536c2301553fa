"""The one settings object: env vars, YAML file, derived endpoints, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic import ValidationError

from byoc_platform.cli_settings import load_settings, running_stack_settings, unknown_variables
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


def test_archives_must_outlive_the_hot_days(monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives expiring while their day was hot left retention refusing it forever (F65)."""
    monkeypatch.setenv("BYOC_RETENTION__HOT_DAYS", "30")
    for archive_days in ("7", "30"):
        monkeypatch.setenv("BYOC_RETENTION__ARCHIVE_DAYS", archive_days)
        with pytest.raises(ValidationError) as refused:
            Settings()
        said = str(refused.value)
        assert f"retention.archive_days ({archive_days})" in said
        assert "retention.hot_days (30)" in said
    monkeypatch.setenv("BYOC_RETENTION__ARCHIVE_DAYS", "31")
    assert Settings().retention.archive_days == 31


def test_unknown_setting_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "byoc.yaml"
    config.write_text("no_such_setting: 1\n")
    monkeypatch.setenv("BYOC_CONFIG_FILE", str(config))
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        # clickhouse-connect reads "127.0.0.1:29523" as localhost:8123: another server.
        ("BYOC_CLICKHOUSE__URL", "127.0.0.1:29523", "clickhouse.url"),
        ("BYOC_CLICKHOUSE__URL", "notaurl", "clickhouse.url"),
        ("BYOC_S3__ENDPOINT", "http://127.0.0.1:99999", "s3.endpoint"),
        ("BYOC_KMS__ENDPOINT", "ftp://kms:1", "kms.endpoint"),
        ("BYOC_CONTROL_PLANE__API_URL", "control-plane/graphql", "control_plane.api_url"),
        ("BYOC_LEDGER__DATABASE_URL", "notaurl", "ledger.database_url"),
        ("BYOC_PORTS__KMS", "99999", "ports.kms"),
        ("BYOC_PORTS__S3", "0", "ports.s3"),
        ("BYOC_LOG_LEVEL", "bogus", "log_level"),
        ("BYOC_STREAM__WINDOW_MS", "0", "stream.window_ms"),
        ("BYOC_API__MAX_BATCH_EVENTS", "-1", "api.max_batch_events"),
        ("BYOC_CONTROL_PLANE__PUBLISH_BULK_SIZE", "101", "control_plane.publish_bulk_size"),
        ("BYOC_CONTROL_PLANE__PUBLISH_BULK_SIZE", "0", "control_plane.publish_bulk_size"),
    ],
)
def test_values_the_components_cannot_use_name_the_setting(
    variable: str, value: str, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=named.replace(".", r"\.")):
        Settings()


def test_usable_urls_and_levels_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_CLICKHOUSE__URL", "https://ch.example.com:8443")
    monkeypatch.setenv("BYOC_LEDGER__DATABASE_URL", "postgresql://u:p@db:5432/ledger")
    monkeypatch.setenv("BYOC_LOG_LEVEL", "debug")
    s = Settings()
    assert s.clickhouse.url == "https://ch.example.com:8443"
    assert s.ledger.database_url == "postgresql://u:p@db:5432/ledger"
    assert s.log_level == "DEBUG"


def test_unknown_variables_are_named_and_known_ones_are_not() -> None:
    environ = {
        "BYOC_PORT__API": "1",  # PORTS
        "BYOC_PORTS__APII": "1",
        "BYOC_PORTS__API": "1",
        "BYOC_DATA_DIR": "/x",
        "BYOC_CONFIG_FILE": "/x.yaml",
        "BYOC_LEDGER__DEFAULT_RESERVATION_TTL_S": "60",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == ["BYOC_PORTS__APII", "BYOC_PORT__API"]


def test_a_missing_config_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOC_CONFIG_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(typer.Exit) as exit_:
        load_settings(tmp_path)
    assert exit_.value.exit_code == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_running_stack_settings_are_those_the_supervisor_wrote(tmp_path: Path) -> None:
    ours = Settings(data_dir=tmp_path)
    assert running_stack_settings(ours) is ours  # no stack has run there
    (tmp_path / "settings.yaml").write_text(f"data_dir: {tmp_path}\nports:\n  kms: 29599\n")
    assert running_stack_settings(ours).ports.kms == 29599


def test_tls_needs_both_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    # A certificate alone served plain HTTP while api_url announced https.
    monkeypatch.setenv("BYOC_API__TLS_CERT_FILE", str(cert))
    with pytest.raises(ValidationError, match="tls_key_file is not set"):
        Settings()
    monkeypatch.setenv("BYOC_API__TLS_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match=r"tls_key_file: no file .*missing\.pem"):
        Settings()
    monkeypatch.setenv("BYOC_API__TLS_KEY_FILE", str(key))
    assert Settings().api_url.startswith("https://")
