"""Clients for the platform's engines, built from the one settings object.

Every part uses these so connection details live in one place: Kafka (confluent-kafka for
throughput: ~83k msg/s produce vs ~25k for kafka-python here, platform-facts.md), ClickHouse
through clickhouse-connect over HTTP, S3 and KMS through boto3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client as ClickHouseClient

    from byoc_platform.settings import Settings


def kafka_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Base librdkafka config; callers add producer/consumer specifics."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka.bootstrap}
    config.update(overrides)
    return config


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    # acks=all: an acknowledged record is durable. Idempotence (no duplicates from retries
    # within one session) only where the broker implements it safely: see
    # settings.kafka.idempotent_producer; duplicates are absorbed by dedup either way.
    return kafka_config(
        settings,
        **{
            "acks": "all",
            "enable.idempotence": settings.kafka.idempotent_producer,
            # Without idempotence, one request in flight keeps retried batches in order.
            "max.in.flight.requests.per.connection": 5 if settings.kafka.idempotent_producer else 1,
            "linger.ms": 2,
            "compression.type": "lz4",
            "message.timeout.ms": 30_000,
            **overrides,
        },
    )


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    # Tansu: never rely on end offsets; first join waits ~session timeout / 2 (platform-facts).
    return kafka_config(
        settings,
        **{
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            **overrides,
        },
    )


def acknowledged(err: Any, msg: Any) -> bool:
    """Whether a delivery report means the record is in the log.

    After a broker restart, librdkafka's idempotent producer can report a record as delivered
    (no error) WITHOUT an offset, and the record is not in the log (seen with Tansu: tests/faults
    test_broker_acknowledgements). Only a report with an offset counts as durable; anything
    else must be treated as a failure and resent (dedup absorbs the rare duplicate).
    """
    if err is not None or msg is None:
        return False
    offset = msg.offset()
    return offset is not None and offset >= 0


# Errors after which an idempotent producer must be replaced, not reused: Tansu fences the
# old producer id after a broker restart, and every later send with it fails the same way.
_UNUSABLE_PRODUCER = frozenset(
    {
        "PRODUCER_FENCED",
        "INVALID_PRODUCER_EPOCH",
        "UNKNOWN_PRODUCER_ID",
        "OUT_OF_ORDER_SEQUENCE_NUMBER",
        "INVALID_PRODUCER_ID_MAPPING",
    }
)


def producer_unusable(err: Any) -> bool:
    """Whether a delivery error means the producer itself must be replaced."""
    return err is not None and (err.fatal() or err.name() in _UNUSABLE_PRODUCER)


def kafka_admin(settings: Settings, quiet: bool = False) -> Any:
    """An admin client; ``quiet`` silences librdkafka's connection errors (health probes)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka_config(settings, **({"log_level": 2} if quiet else {})))


def clickhouse(settings: Settings, **kwargs: Any) -> ClickHouseClient:
    import clickhouse_connect

    assert settings.clickhouse.url is not None
    return clickhouse_connect.get_client(
        dsn=settings.clickhouse.url,
        username=settings.clickhouse.username,
        password=settings.clickhouse.password,
        **kwargs,
    )


def boto3_kwargs(settings: Settings, service: str) -> dict[str, Any]:
    endpoint = settings.kms.endpoint if service == "kms" else settings.s3.endpoint
    region = settings.kms.region if service == "kms" else settings.s3.region
    return {
        "endpoint_url": endpoint,
        "region_name": region,
        "aws_access_key_id": settings.s3.access_key,
        "aws_secret_access_key": settings.s3.secret_key,
    }


# Bounded waits for S3 and KMS (botocore's defaults: 60 s to connect, 60 s per read, so a KMS
# that accepts connections but never answers held `byoc archive restore` silent for minutes,
# F62). A read timeout is per socket read, not per request: large uploads are unaffected.
# KMS calls are small and answer in milliseconds; S3 may wait on its own KMS call per object.
BOTO_CONNECT_TIMEOUT_S = 5
BOTO_READ_TIMEOUT_S = {"kms": 10, "s3": 30}
BOTO_MAX_ATTEMPTS = {"kms": 2, "s3": 3}  # the first try included


def boto3_config(service: str) -> Any:
    """The botocore Config of the platform's ``service`` ("s3" or "kms") clients."""
    from botocore.config import Config

    config = Config(
        connect_timeout=BOTO_CONNECT_TIMEOUT_S,
        read_timeout=BOTO_READ_TIMEOUT_S[service],
        retries={"max_attempts": BOTO_MAX_ATTEMPTS[service], "mode": "standard"},
    )
    if service == "s3":
        config = config.merge(Config(s3={"addressing_style": "path"}))
    return config


def s3(settings: Settings) -> Any:
    import boto3

    return boto3.client("s3", config=boto3_config("s3"), **boto3_kwargs(settings, "s3"))


def kms(settings: Settings) -> Any:
    import boto3

    return boto3.client("kms", config=boto3_config("kms"), **boto3_kwargs(settings, "kms"))
