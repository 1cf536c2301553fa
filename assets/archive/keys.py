"""KMS keys of the archive, by alias."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def ensure_key(kms: Any, alias: str, description: str) -> str:
    """The key id behind ``alias``, creating key and alias if missing (local stack only)."""
    from botocore.exceptions import ClientError

    try:
        return kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NotFoundException":
            raise
    key_id = kms.create_key(Description=description, KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"][
        "KeyId"
    ]
    try:
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    except ClientError as exc:  # another process won the race: use its key
        if exc.response["Error"]["Code"] != "AlreadyExistsException":
            raise
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
        return kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"]
    log.info("created KMS key %s as %s", key_id, alias)
    return key_id
