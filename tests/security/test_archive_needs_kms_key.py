"""Invariant 7: the cold archive is unreadable without the customer's KMS key.

A real archive file (the archive asset's own code: Parquet modular encryption with KMS-wrapped
keys, SSE-KMS on the object) is written to SeaweedFS and read back. Then the archive key is
disabled and the S3 server restarted (SeaweedFS caches data keys until then): the object
cannot be fetched, the file's bytes cannot be decrypted, and nothing new can be written, while
no plaintext sits on disk. Enabling the key again makes everything readable: the key, and
nothing else, is what stood in the way.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from assets.archive.encryption import ArchiveCrypto
from assets.archive.hours import (
    EVENT_COLUMNS,
    archive_hour,
    decode_parquet,
    fetch_verified,
    hot_fingerprints,
)
from assets.archive.keys import ensure_key
from assets.warehouse_tables import ensure_tables
from byoc_platform import clients
from byoc_platform.stack.supervisor import Supervisor
from tests.security.conftest import restart
from tests.stack_fixtures import test_settings

pytestmark = pytest.mark.integration

HOUR = dt.datetime(2025, 6, 1, 10, tzinfo=dt.UTC)


@pytest.fixture
def archive_stack(tmp_path: Path) -> Iterator[Supervisor]:
    settings = test_settings(tmp_path / "data")
    supervisor = Supervisor(settings, ["kms", "s3", "warehouse"], restart=False)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


def insert_events(settings: Any, environment: str, marker: str, n: int = 50) -> None:
    ch = clients.clickhouse(settings)
    rows = [
        [
            environment,
            f"{marker}-cust-{i % 5}",
            "",
            "api_call",
            f"{marker}-key-{i}",
            HOUR + dt.timedelta(seconds=i),
            HOUR + dt.timedelta(seconds=i, milliseconds=5),
            {"region": "eu"},
            {"tokens": float(i)},
            f'{{"region":"eu","tokens":{i}}}',
        ]
        for i in range(n)
    ]
    ch.insert(f"{settings.clickhouse.database}.usage_events", rows, column_names=EVENT_COLUMNS)
    ch.close()


def crypto(settings: Any) -> ArchiveCrypto:
    """A fresh instance: no key-encryption key cached from an earlier read."""
    return ArchiveCrypto(
        clients.kms(settings), settings.kms.key_alias, settings.kms.pii_key_alias, EVENT_COLUMNS
    )


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_archive_is_unreadable_without_the_kms_key(archive_stack: Supervisor) -> None:
    s = archive_stack.settings
    kms, s3 = clients.kms(s), clients.s3(s)
    ensure_key(kms, s.kms.pii_key_alias, "archive PII column key (tests)")
    environment = f"kms-{uuid.uuid4().hex[:6]}"
    marker = uuid.uuid4().hex
    insert_events(s, environment, marker)
    ch = clients.clickhouse(s)
    db = s.clickhouse.database
    ensure_tables(ch, db)  # the archive's manifest table (owned by the Dagster side)
    expected = hot_fingerprints(ch, db, HOUR, HOUR + dt.timedelta(hours=1), environment)
    manifest = archive_hour(
        ch, db, s3, s.s3.archive_bucket, crypto(s), s.kms.key_alias, environment, HOUR,
        expected[(environment, HOUR)],
    )  # fmt: skip
    assert manifest.verified and manifest.rows == 50
    bucket, key = s.s3.archive_bucket, manifest.object_key
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert fetch_verified(s3, bucket, manifest, crypto(s)).num_rows == 50

    # At rest and in the file itself: no plaintext; without KMS not even the schema.
    assert marker.encode() not in body
    with pytest.raises(Exception, match=r"(?i)encrypt|decrypt|footer"):
        pq.read_table(io.BytesIO(body))
    data_dir = s.data_dir / "s3" / "data"
    assert not files_containing(data_dir, marker.encode())

    # Disable the archive key; SeaweedFS forgets its cached data keys on restart.
    key_id = kms.describe_key(KeyId=s.kms.key_alias)["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=key_id)
    restart(archive_stack, "s3")
    s3 = clients.s3(s)
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with pytest.raises(Exception, match=r"(?i)disabled"):
        decode_parquet(body, crypto(s))  # the bytes alone: the wrapped keys stay wrapped
    with pytest.raises(ClientError):  # no silent plaintext fallback for new archives
        s3.put_object(
            Bucket=bucket,
            Key=f"events/env={environment}/probe",
            Body=b"new data",
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=s.kms.key_alias,
        )

    # The key back: readable again, so the key was the only obstacle.
    kms.enable_key(KeyId=key_id)
    restart(archive_stack, "s3")
    s3 = clients.s3(s)
    table = fetch_verified(s3, bucket, manifest, crypto(s))
    assert table.num_rows == 50
    assert set(table.column("customer_id").to_pylist()) == {f"{marker}-cust-{i}" for i in range(5)}
