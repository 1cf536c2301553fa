"""Idempotent preparation of the engines: KMS key, buckets, topics, schemas, API key.

Each step is safe to repeat on every `byoc up`; none touches existing data.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from byoc_platform.settings import Settings

log = logging.getLogger("byoc.stack")


def ensure_kms_key(s: Settings) -> str:
    """The archive key (by alias), created once; returns its key id."""
    from botocore.exceptions import ClientError

    from byoc_platform.clients import kms

    client = kms(s)
    try:
        return client.describe_key(KeyId=s.kms.key_alias)["KeyMetadata"]["KeyId"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NotFoundException":
            raise
    key_id = client.create_key(
        Description="byoc-platform archive key (cold tier, Parquet modular encryption)",
        KeyUsage="ENCRYPT_DECRYPT",
    )["KeyMetadata"]["KeyId"]
    client.create_alias(AliasName=s.kms.key_alias, TargetKeyId=key_id)
    log.info("created KMS key %s as %s", key_id, s.kms.key_alias)
    return key_id


def ensure_buckets(s: Settings) -> None:
    from botocore.exceptions import ClientError

    from byoc_platform.clients import s3

    client = s3(s)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (s.kafka.storage_bucket, s.s3.archive_bucket):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
            log.info("created bucket %s", bucket)
    # Default encryption of the archive bucket: SSE-KMS under the archive key, so an object
    # written without headers is still encrypted. Writers also send the headers explicitly.
    try:
        client.put_bucket_encryption(
            Bucket=s.s3.archive_bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": s.kms.key_alias,
                        }
                    }
                ]
            },
        )
    except ClientError as exc:  # not fatal: writers set SSE-KMS per object
        log.warning("default bucket encryption not set on %s: %s", s.s3.archive_bucket, exc)


def ensure_topics(s: Settings, timeout_s: float = 30.0) -> None:
    from confluent_kafka.admin import NewTopic

    from byoc_platform.clients import kafka_admin

    admin = kafka_admin(s)
    wanted = [s.kafka.events_topic, s.kafka.deduped_topic, s.kafka.reports_topic]
    deadline = time.monotonic() + timeout_s
    while True:
        existing = set(admin.list_topics(timeout=5).topics)
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=s.kafka.partitions, replication_factor=1) for t in missing]
        )
        for topic, future in futures.items():
            try:
                future.result(10)
                log.info("created topic %s (%d partitions)", topic, s.kafka.partitions)
            except Exception as exc:  # already exists (raced) is fine; anything else retried
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and time.monotonic() > deadline:
                    raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {missing} not visible after {timeout_s}s")
        time.sleep(0.2)


def ensure_warehouse_schema(s: Settings) -> None:
    from byoc_platform.clients import clickhouse
    from byoc_platform.warehouse_cluster import apply_settings_migrations

    client = clickhouse(s)
    try:
        # Local: warehouse_schema's tables. In a cluster (clickhouse.cluster set), replicated
        # ON CLUSTER, so `byoc stream` never creates a table on one replica only.
        count = apply_settings_migrations(client, s)
    finally:
        client.close()
    log.info("warehouse schema ready (%d statements)", count)


def ensure_api_key(s: Settings) -> str:
    """The local API key of ``s.environment``: the configured one, or one kept in stack.json.

    The key store holds only its hash; the plain key is kept for the local user in
    ``stack.json`` (mode 0600), like a kubeconfig.
    """
    from byoc_platform.auth import KeyStore

    assert s.api_keys_file is not None
    store = KeyStore(s.api_keys_file)
    key = s.api_key or _stack_value(s, "api_key")
    if key and store.environment_of(key) == s.environment:
        return key
    if key:
        store.add(key, s.environment, label="local")
        return key
    key = store.create(s.environment, label="local")
    _write_stack_value(s, "api_key", key)
    return key


def _stack_value(s: Settings, name: str) -> Any:
    try:
        return json.loads(s.stack_file.read_text()).get(name)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_stack_value(s: Settings, name: str, value: Any) -> None:
    try:
        data = json.loads(s.stack_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data[name] = value
    write_stack_file(s, data)


def write_stack_file(s: Settings, data: dict[str, Any]) -> None:
    s.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = s.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.chmod(0o600)
    tmp.replace(s.stack_file)
