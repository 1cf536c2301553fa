"""The one typed settings object.

Every endpoint, port, directory, key and limit lives here. Values come from (highest first):
constructor arguments, ``BYOC_*`` environment variables (nested with ``__``, e.g.
``BYOC_KAFKA__PARTITIONS=8``), an optional YAML file named by ``BYOC_CONFIG_FILE``, then the
defaults below, which are the local stack's loopback ports (DESIGN.md section 3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, PositiveInt, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from byoc_platform.environments import environment_problem

LOOPBACK = "127.0.0.1"


def _http_url(value: str | None) -> str | None:
    # clickhouse-connect and boto read "127.0.0.1:8123" or "notaurl" as something else (the
    # former as localhost:8123): a typo would reach another server, so refuse it here.
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s)://host[:port] URL")
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    return value


def _database_url(value: str | None) -> str | None:
    if value is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except ArgumentError:
        raise ValueError(
            f"{value!r} is not a database URL (sqlite:///path or postgresql://...)"
        ) from None
    return value


def _log_level(value: str) -> str:
    import logging

    if not isinstance(logging.getLevelName(value.upper()), int):
        raise ValueError(f"{value!r} is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return value.upper()


def _environment_id(value: str) -> str:
    problem = environment_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Port = Annotated[int, Field(ge=1, le=65535)]
EnvironmentId = Annotated[str, AfterValidator(_environment_id)]
LogLevel = Annotated[str, AfterValidator(_log_level)]
HttpUrl = Annotated[str | None, AfterValidator(_http_url)]
DatabaseUrl = Annotated[str | None, AfterValidator(_database_url)]


class Ports(BaseModel):
    api: Port = 8080
    grpc: Port = 8081
    control_plane: Port = 8090
    dagster: Port = 3000
    kafka: Port = 9092
    clickhouse: Port = 8123
    s3: Port = 8333
    kms: Port = 4599
    stream: Port = 8082  # stream processor health and metrics
    # Internal ports of the embedded SeaweedFS that users never need.
    s3_grpc: Port = 18333
    seaweed_master: Port = 9333
    seaweed_master_grpc: Port = 19333
    seaweed_volume: Port = 8340
    seaweed_volume_grpc: Port = 18340
    seaweed_filer: Port = 8888
    seaweed_filer_grpc: Port = 18888
    seaweed_admin: Port = 23646
    seaweed_admin_grpc: Port = 33646


class KafkaSettings(BaseModel):
    bootstrap: str | None = None  # default: host:ports.kafka
    events_topic: str = "usage.events"
    deduped_topic: str = "usage.deduped"
    # Aggregated usage (REST /api/v2/usage, GraphQL ReportUsage[Bulk]): UsageReportBatch records.
    reports_topic: str = "usage.reports"
    partitions: int = Field(default=4, ge=1)
    # Tansu storage: "s3" (durable, default) or "memory" (fast unit tests only).
    storage: Literal["s3", "memory"] = "s3"
    storage_bucket: str = "tansu"
    # Idempotent producers. Off by default because the embedded broker's idempotence loses
    # acknowledged records: Tansu 0.6.0 advances a producer's sequence BEFORE the batch is
    # durable, so when S3 fails between the two, the retried batch is answered
    # DUPLICATE_SEQUENCE_NUMBER and librdkafka reports it delivered although it was never
    # written (finding F10, docs/reliability.md; tests/faults/test_broker_acknowledgements.py).
    # Off, a retry may store a record twice, which the idempotency-key dedup absorbs. Turn it
    # on for Apache Kafka (deploy/: BYOC_KAFKA__IDEMPOTENT_PRODUCER=true).
    idempotent_producer: bool = False


class ClickHouseSettings(BaseModel):
    url: HttpUrl = None  # default: http://host:ports.clickhouse
    database: str = "byoc"
    username: str = "default"
    password: str = ""
    # A cluster name of the server's remote_servers (deploy/: "byoc"): the hot tables are then
    # Replicated*MergeTree created ON CLUSTER it (byoc_platform.warehouse_cluster). None: one node.
    cluster: str | None = None


class S3Settings(BaseModel):
    endpoint: HttpUrl = None  # default: http://host:ports.s3
    region: str = "us-east-1"
    access_key: str = "byoc-local"
    secret_key: str = "byoc-local-secret"
    archive_bucket: str = "byoc-archive"


class KmsSettings(BaseModel):
    endpoint: HttpUrl = None  # default: http://host:ports.kms
    region: str = "us-east-1"
    key_alias: str = "alias/byoc-archive"
    # Column key of the PII-bearing columns of archived Parquet (customer and resource ids,
    # labels, dimensions): a key of its own, so access to PII is granted apart from the rest.
    pii_key_alias: str = "alias/byoc-archive-pii"


class ApiSettings(BaseModel):
    max_batch_events: PositiveInt = 1000
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    max_future_skew_s: float = 300.0
    produce_timeout_s: float = 10.0
    # Bytes of accepted-but-unacknowledged records; past it requests get 429 + retry-after.
    producer_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    # Slow clients: seconds allowed to send a request's headers (from the connection or the
    # previous answer; then the connection is closed) and its whole body (from the first read;
    # then 408). The default takes a 4 MiB body at 400 KiB/s or more.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=10.0, gt=0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        # One without the other served plain HTTP while api_url said https.
        files = {"tls_cert_file": self.tls_cert_file, "tls_key_file": self.tls_key_file}
        missing = [name for name, path in files.items() if path is None]
        if len(missing) == 1:
            raise ValueError(f"TLS needs both files: {missing[0]} is not set")
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no file {path}")
        return self


class StreamSettings(BaseModel):
    dedup_window_s: float = 7 * 24 * 3600.0
    out_of_orderness_ms: int = Field(default=5000, ge=0)
    window_ms: PositiveInt = 60_000
    # The processor's group on usage.events; its usage.reports loader uses "<this>-reports".
    consumer_group: str = "byoc-stream"
    max_batch: PositiveInt = 20_000
    flush_interval_ms: PositiveInt = 200
    # Who computes the rows: the embedded engine (`byoc stream`, writes to ClickHouse itself) or
    # the Flink job (writes to Kafka topics that ClickHouse ingests: warehouse_cluster.py).
    engine: Literal["embedded", "flink"] = "embedded"


class FlinkSettings(BaseModel):
    """Read by the Flink job from its environment (streaming/flink/usage_job.py) and by the
    warehouse migrations, which must consume the topics the job writes."""

    group_id: str = "byoc-flink-usage"
    sink_topic_prefix: str = "byoc.rows."  # + usage_events / usage_minute / late_hours


class LedgerSettings(BaseModel):
    # SQLite file under data_dir by default; a postgresql+psycopg:// URL in a cluster.
    database_url: DatabaseUrl = None
    default_reservation_ttl_s: PositiveInt = 3600


class ControlPlaneSettings(BaseModel):
    api_url: HttpUrl = None  # default: http://host:ports.control_plane/graphql
    api_key: str = "byoc-local-control-plane-key"
    seed_file: Path | None = None  # default: the packaged seed
    sync_interval_s: float = 5.0
    # The contract's reportUsageBulk limit: a larger bulk is refused whole by the control plane
    # (then split into single sends, one request per usage).
    publish_bulk_size: int = Field(default=100, ge=1, le=100)


class FallbackEntitlement(BaseModel):
    """The global fallback answer for one feature (Stigg's ENTITLEMENTS_FALLBACK)."""

    hasAccess: bool = False
    usageLimit: float | None = None
    isUnlimited: bool = False
    value: int | None = None  # NUMBER features
    enumValues: list[str] = []  # ENUM features


class EnforcementSettings(BaseModel):
    # Local store (catalog, counters, sync cursor), one per runtime instance (its counters
    # live in its memory; a second instance on a PostgreSQL store is refused at start).
    # Default: SQLite (WAL) file under <data_dir>/enforcement; or a postgresql+psycopg:// URL.
    database_url: DatabaseUrl = None
    # Answers for customers unknown to the local state, keyed by feature id; marked fallback.
    fallback_entitlements: dict[str, FallbackEntitlement] = {}
    # Answers are marked fallback when the last successful sync is older than this.
    stale_after_s: float = Field(default=60.0, gt=0)
    sync_page_size: int = Field(default=500, ge=1, le=10_000)
    sync_timeout_s: float = Field(default=5.0, gt=0)
    # Counters fed by the deduplicated stream; off for processes that only serve checks.
    consume_usage: bool = True
    consumer_group: str = "byoc-enforcement"
    # Replay the current usage periods from ClickHouse on start (restarts lose nothing).
    rebuild_from_warehouse: bool = True
    grpc_enabled: bool = True


class RetentionSettings(BaseModel):
    hot_days: int = Field(default=30, ge=1)
    archive_days: int = Field(default=400, ge=1)
    rollup_lag_minutes: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _archives_outlive_hot_days(self) -> RetentionSettings:
        # Otherwise a day's archive expired while the day was still hot, and retention then
        # refused to drop it forever ("no verified archive"): the hot tier grew without bound.
        if self.archive_days <= self.hot_days:
            raise ValueError(
                f"retention.archive_days ({self.archive_days}) must be greater than "
                f"retention.hot_days ({self.hot_days}): a day's archive must outlive its hot data"
            )
        return self


class QualitySettings(BaseModel):
    # The freshness check of usage_events fails when nothing was ingested for this long.
    source_freshness_minutes: int = Field(default=60, ge=1)


class Settings(BaseSettings):
    """Configuration of one byoc-platform deployment."""

    model_config = SettingsConfigDict(
        env_prefix="BYOC_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    deployment: Literal["local", "cluster"] = "local"
    host: str = LOOPBACK
    data_dir: Path = Path(".byoc")
    environment: EnvironmentId = "development"  # the environment the local API key belongs to
    api_key: str | None = None  # local API key; generated by `byoc up` when unset
    api_keys_file: Path | None = None  # hashed keys; default <data_dir>/auth/api_keys.json
    log_level: LogLevel = "INFO"
    ports: Ports = Ports()
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    s3: S3Settings = S3Settings()
    kms: KmsSettings = KmsSettings()
    api: ApiSettings = ApiSettings()
    stream: StreamSettings = StreamSettings()
    flink: FlinkSettings = FlinkSettings()
    ledger: LedgerSettings = LedgerSettings()
    control_plane: ControlPlaneSettings = ControlPlaneSettings()
    retention: RetentionSettings = RetentionSettings()
    quality: QualitySettings = QualitySettings()
    enforcement: EnforcementSettings = EnforcementSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("BYOC_CONFIG_FILE")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _derive_endpoints(self) -> Settings:
        # Endpoints default to the configured host and ports, so one port override is enough.
        h, p = self.host, self.ports
        self.data_dir = self.data_dir.absolute()
        if self.kafka.bootstrap is None:
            self.kafka.bootstrap = f"{h}:{p.kafka}"
        if self.clickhouse.url is None:
            self.clickhouse.url = f"http://{h}:{p.clickhouse}"
        if self.s3.endpoint is None:
            self.s3.endpoint = f"http://{h}:{p.s3}"
        if self.kms.endpoint is None:
            self.kms.endpoint = f"http://{h}:{p.kms}"
        if self.control_plane.api_url is None:
            self.control_plane.api_url = f"http://{h}:{p.control_plane}/graphql"
        if self.api_keys_file is None:
            self.api_keys_file = self.data_dir / "auth" / "api_keys.json"
        if self.enforcement.database_url is None:
            self.enforcement.database_url = (
                f"sqlite:///{self.data_dir / 'enforcement' / 'enforcement.db'}"
            )
        if self.ledger.database_url is None:
            self.ledger.database_url = f"sqlite:///{self.data_dir / 'ledger' / 'ledger.db'}"
        return self

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api.tls_cert_file else "http"
        return f"{scheme}://{self.host}:{self.ports.api}"

    def component_dir(self, name: str) -> Path:
        """The data directory of one component (created on demand)."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def stack_file(self) -> Path:
        return self.data_dir / "stack.json"

    @property
    def stack_settings_file(self) -> Path:
        """The settings the stack supervisor of this data_dir gave its children."""
        return self.data_dir / "settings.yaml"
