"""API keys: each belongs to one environment and is stored only as a SHA-256 hash.

The key file (``<data_dir>/auth/api_keys.json`` by default) holds hashes, never keys; a key is
shown once, when created. Lookup hashes the presented key and finds it by hash, so the file
and the process memory never hold a usable key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from byoc_platform.environments import environment_problem

log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    environment: str
    key_hash: str
    created_at: str
    label: str = ""


class KeyFileError(ValueError):
    """The key file is not a list of key records (e.g. after a hand edit)."""


class KeyStore:
    """A small JSON file of hashed keys, re-read when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._bad_mtime: float | None = None  # a version of the file that did not parse
        self._by_hash: dict[str, KeyRecord] = {}

    def _load(self, strict: bool = True) -> None:
        """Re-read the file if it changed. An unreadable version raises KeyFileError when
        ``strict`` (before a change: writing would drop its keys); otherwise the keys read last
        stay in force (a bad edit must not turn every request into an error), said once."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._by_hash, self._mtime = {}, None
            return
        if mtime == self._mtime or (mtime == self._bad_mtime and not strict):
            return
        try:
            records = [KeyRecord(**r) for r in json.loads(self.path.read_text() or "[]")]
        except (ValueError, TypeError) as exc:  # not JSON, not a list of records
            if mtime != self._bad_mtime:
                log.error(
                    "API key file %s unreadable, keeping the keys read before: %s", self.path, exc
                )
                self._bad_mtime = mtime
            if strict:
                raise KeyFileError(f"{self.path} is not a valid key file: {exc}") from None
            return
        self._by_hash = {r.key_hash: r for r in records}
        self._mtime = mtime

    def records(self) -> list[KeyRecord]:
        with self._lock:
            self._load()
            return list(self._by_hash.values())

    def environment_of(self, key: str | None) -> str | None:
        """The environment a key belongs to, or None when the key is unknown."""
        if not key:
            return None
        with self._lock:
            self._load(strict=False)
            record = self._by_hash.get(hash_key(key))
        return record.environment if record else None

    def create(self, environment: str, label: str = "") -> str:
        """Create a key for ``environment``; returns the key (the only time it is visible)."""
        key = f"byoc_{secrets.token_urlsafe(24)}"
        self.add(key, environment, label)
        return key

    def add(self, key: str, environment: str, label: str = "") -> KeyRecord:
        """Register a key chosen elsewhere (e.g. from a secret); idempotent.

        Raises ValueError for an environment id outside the rule (environments.py)."""
        problem = environment_problem(environment)
        if problem is not None:
            raise ValueError(problem)
        record = KeyRecord(
            key_id=hash_key(key)[:12],
            environment=environment,
            key_hash=hash_key(key),
            created_at=datetime.now(UTC).isoformat(),
            label=label,
        )
        with self._lock:
            self._load()
            if record.key_hash in self._by_hash:
                return self._by_hash[record.key_hash]
            self._by_hash[record.key_hash] = record
            self._write()
        return record

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            self._load()
            found = [h for h, r in self._by_hash.items() if r.key_id == key_id]
            for h in found:
                del self._by_hash[h]
            if found:
                self._write()
        return bool(found)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.__dict__ for r in self._by_hash.values()], indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
        self._mtime = self.path.stat().st_mtime
