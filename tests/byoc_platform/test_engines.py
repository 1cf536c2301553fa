"""The engines of the local stack work as the platform uses them (real processes)."""

from __future__ import annotations

import datetime as dt
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic

from byoc_platform import clients
from byoc_platform.warehouse_schema import USAGE_EVENTS_COLUMNS
from tests.stack_fixtures import Stack


def test_broker_on_s3_storage_produces_and_consumes(infra: Stack) -> None:
    s = infra.settings
    assert s.kafka.storage == "s3"
    # A topic of its own: usage.events of the shared stack carries only valid event records.
    marker = uuid.uuid4().hex
    topic = f"test.engines.{marker}"
    admin = clients.kafka_admin(s)  # keep it alive until the future resolves
    admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(30)
    producer = Producer(clients.producer_config(s))
    acked: list[str] = []
    for i in range(50):
        producer.produce(
            topic,
            key=f"c{i % 5}",
            value=f"{marker}-{i}".encode(),
            on_delivery=lambda err, msg: acked.append(msg.value().decode()) if not err else None,
        )
    assert producer.flush(30) == 0
    assert len(acked) == 50
    consumer = Consumer(clients.consumer_config(s, f"test-{marker}"))
    consumer.subscribe([topic])
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 50 and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=1):
            if not message.error() and message.value().decode().startswith(marker):
                seen.add(message.value().decode())
    consumer.close()
    assert seen == {f"{marker}-{i}" for i in range(50)}


def test_warehouse_serves_clickhouse_http(infra: Stack) -> None:
    client = infra.clickhouse()
    db = infra.settings.clickhouse.database
    tables = {row[0] for row in client.query(f"SHOW TABLES FROM {db}").result_rows}
    assert {"usage_events", "usage_minute", "late_hours"} <= tables
    key = uuid.uuid4().hex
    row = [
        "env-t",
        "cust",
        "",
        "api_call",
        key,
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        {"region": "eu"},
        {"tokens": 12.0},
        "{}",
    ]
    # The same block twice with one dedup token is stored once (replay safety).
    for _ in range(2):
        client.insert(
            f"{db}.usage_events",
            [row],
            column_names=USAGE_EVENTS_COLUMNS,
            settings={"insert_deduplication_token": key},
        )
    result = client.query(
        f"SELECT count(), sum(`values`['tokens']) FROM {db}.usage_events "
        "WHERE idempotency_key = {k:String}",
        parameters={"k": key},
    )
    assert result.result_rows == [(1, 12.0)]
    try:
        client.query("SELECT * FROM no_such_table")
    except Exception as exc:
        assert "UNKNOWN_TABLE" in str(exc) or "Unknown table" in str(exc)
    else:
        raise AssertionError("a bad query must raise")


def test_s3_object_is_encrypted_with_kms(infra: Stack) -> None:
    s = infra.settings
    s3 = clients.s3(s)
    key = f"tests/{uuid.uuid4().hex}.bin"
    secret = f"plaintext-{uuid.uuid4().hex}".encode()
    s3.put_object(
        Bucket=s.s3.archive_bucket,
        Key=key,
        Body=secret,
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=s.kms.key_alias,
    )
    head = s3.head_object(Bucket=s.s3.archive_bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].startswith("arn:aws:kms:")
    assert s3.get_object(Bucket=s.s3.archive_bucket, Key=key)["Body"].read() == secret
    # At rest the volume files hold ciphertext only.
    data_dir = s.data_dir / "s3" / "data"
    assert not any(
        secret in p.read_bytes()
        for p in data_dir.rglob("*")
        if p.is_file() and p.stat().st_size < 256 * 1024 * 1024
    )
