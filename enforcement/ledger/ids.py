"""Deterministic 128-bit ids.

Every wallet, account, transfer and event id is a hash of what it stands for (environment,
operation, reference, index). So a retried or duplicated operation produces the same transfer
ids and the primary key refuses the second posting: "at most one transfer per id" holds in the
database even if application-level idempotency had a bug. The parts are JSON-encoded before
hashing, so ids containing any separator cannot collide.
"""

from __future__ import annotations

import hashlib

import msgspec

_encode = msgspec.json.encode


def hid(*parts: object) -> str:
    return hashlib.blake2b(_encode(parts), digest_size=16).hexdigest()


def wallet_id(environment: str, customer_id: str, currency_id: str, resource_id: str) -> str:
    return hid("wallet", environment, customer_id, currency_id, resource_id)


def wallet_account_id(wallet: str, kind: str) -> str:
    return hid("account", wallet, kind)


def grant_account_id(environment: str, grant_id: str, kind: str) -> str:
    return hid("account", environment, "grant", grant_id, kind)
