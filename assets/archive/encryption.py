"""Parquet modular encryption with keys wrapped by KMS (invariant 7).

Every column gets its own data key (pyarrow generates them); the data keys are wrapped with
key-encryption keys that KMS wraps in turn (double wrapping: 2 KMS calls per master key and
cache lifetime, not per file). The footer and the non-PII columns are under the archive key
(``settings.kms.key_alias``); the PII-bearing columns under the PII key
(``settings.kms.pii_key_alias``). The footer is encrypted too, so without KMS a file does not
even reveal its schema.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pyarrow.parquet.encryption as pe

# Columns that name or describe a customer's users: under the PII column key.
PII_COLUMNS = ("customer_id", "resource_id", "labels", "dimensions")
ALGORITHM = "AES_GCM_V1"


class AwsKmsClient(pe.KmsClient):
    """pyarrow's KMS interface over a boto3 KMS client (Encrypt/Decrypt)."""

    def __init__(self, kms: Any) -> None:
        super().__init__()
        self._kms = kms

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        blob = self._kms.encrypt(KeyId=master_key_identifier, Plaintext=key_bytes)
        return base64.b64encode(blob["CiphertextBlob"]).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        answer = self._kms.decrypt(
            CiphertextBlob=base64.b64decode(wrapped_key), KeyId=master_key_identifier
        )
        return answer["Plaintext"]


class ArchiveCrypto:
    """Encryption/decryption properties for archive files, one KMS client per instance.

    Keep one instance per run: pyarrow caches the unwrapped key-encryption keys in it.
    """

    def __init__(
        self,
        kms: Any,
        footer_key: str,
        pii_key: str,
        columns: list[str],
        kms_client_class: type[AwsKmsClient] = AwsKmsClient,
    ) -> None:
        self._factory = pe.CryptoFactory(lambda _config: kms_client_class(kms))
        self._connection = pe.KmsConnectionConfig()
        self.footer_key = footer_key
        self.pii_key = pii_key
        pii = [c for c in columns if c in PII_COLUMNS]
        other = [c for c in columns if c not in PII_COLUMNS]
        column_keys = {pii_key: pii}
        if footer_key == pii_key:
            column_keys = {footer_key: pii + other}
        elif other:
            column_keys[footer_key] = other
        self.column_keys = column_keys
        self._encryption = pe.EncryptionConfiguration(
            footer_key=footer_key,
            column_keys=column_keys,
            encryption_algorithm=ALGORITHM,
            plaintext_footer=False,
            double_wrapping=True,
            cache_lifetime=timedelta(minutes=10),
        )
        self._decryption = pe.DecryptionConfiguration(cache_lifetime=timedelta(minutes=10))

    def encryption_properties(self) -> Any:
        return self._factory.file_encryption_properties(self._connection, self._encryption)

    def decryption_properties(self) -> Any:
        return self._factory.file_decryption_properties(self._connection, self._decryption)

    def describe(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM,
            "footer_key": self.footer_key,
            "column_keys": self.column_keys,
            "plaintext_footer": False,
        }
