"""The publish ledger: what was sent to the control plane for each (key, hour), and the plan.

Stigg counts a ``DELTA`` report once per ``idempotencyKey``: a re-sent key is acknowledged and
ignored. So the control plane's total for an hour can only be corrected by a NEW key carrying
the difference. Each (environment, customer, resource, feature, hour) therefore has revisions
0, 1, 2, ...; revision r carries ``delta_r`` under the key derived from
(environment, customer, resource, feature, hour, r), and sum(delta_r) equals the rollup value.

Crash safety: a revision is written to the ledger as ``pending`` BEFORE it is sent, and marked
``sent`` after the control plane acknowledged it. A run that finds pending revisions re-sends
them with their recorded keys (the control plane ignores them if they did arrive), then
computes the next delta against the sum of all recorded revisions. Re-running or backfilling
an unchanged hour sends nothing new; an hour changed by late events sends exactly the
difference once. Two publishes of the same hour must not run at once (the asset's pool).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from assets.quality.reconciliation import close
from assets.rollups.compute import hour_bounds

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Key = tuple[str, str, str, str]  # environment, customer, resource, feature
KEY_PREFIX = "byoc-rollup"
TABLE = "usage_published"


def idempotency_key(key: Key, hour: datetime, revision: int, prefix: str = KEY_PREFIX) -> str:
    """Deterministic from (environment, customer, resource, feature, hour, revision)."""
    digest = hashlib.sha256("\x1f".join(key).encode()).hexdigest()[:32]
    return f"{prefix}:{hour.strftime('%Y%m%dT%H')}:{digest}:r{revision}"


@dataclass(frozen=True)
class Entry:
    """One revision of one (key, hour) in the ledger."""

    environment: str
    customer_id: str
    resource_id: str
    feature_id: str
    hour: datetime
    revision: int
    delta: float
    total: float  # the rollup value this revision brings the published total to
    idempotency_key: str
    status: str  # pending | sent
    behavior: str = "DELTA"  # how the control plane applies ``delta``: added, or SET (levels.py)

    @property
    def key(self) -> Key:
        return (self.environment, self.customer_id, self.resource_id, self.feature_id)


COLUMNS = [
    "environment",
    "customer_id",
    "resource_id",
    "feature_id",
    "hour",
    "revision",
    "delta",
    "total",
    "idempotency_key",
    "status",
    "recorded_at",
]


def read_ledger(
    client: Client, db: str, hour: datetime, table: str = TABLE, behavior: str = "DELTA"
) -> list[Entry]:
    rows = client.query(
        f"SELECT environment, customer_id, resource_id, feature_id, hour, revision, delta, "
        f"total, idempotency_key, status FROM {db}.{table} FINAL "
        "WHERE hour = {start:DateTime('UTC')} "
        "ORDER BY environment, customer_id, resource_id, feature_id, revision",
        parameters=hour_bounds(hour),
    ).result_rows
    return [
        Entry(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4].replace(tzinfo=UTC),
            int(r[5]),
            float(r[6]),
            float(r[7]),
            r[8],
            r[9],
            behavior,
        )
        for r in rows
    ]


def record(client: Client, db: str, entries: list[Entry], status: str, table: str = TABLE) -> None:
    if not entries:
        return
    now = datetime.now(UTC)
    client.insert(
        f"{db}.{table}",
        [
            [
                e.environment,
                e.customer_id,
                e.resource_id,
                e.feature_id,
                e.hour,
                e.revision,
                e.delta,
                e.total,
                e.idempotency_key,
                status,
                now,
            ]
            for e in entries
        ],
        column_names=COLUMNS,
    )


@dataclass
class Plan:
    resend: list[Entry]  # pending revisions of an earlier run: same keys again
    new: list[Entry]  # new revisions carrying the difference
    unchanged: int  # keys whose published total already equals the rollup

    @property
    def to_send(self) -> list[Entry]:
        return self.resend + self.new


def plan(hour: datetime, targets: dict[Key, float], ledger: list[Entry]) -> Plan:
    """What to send so that the published total of every key equals ``targets`` (pure)."""
    by_key: dict[Key, list[Entry]] = defaultdict(list)
    for entry in ledger:
        by_key[entry.key].append(entry)
    resend = [e for e in ledger if e.status != "sent"]
    new: list[Entry] = []
    unchanged = 0
    for key in sorted(set(targets) | set(by_key)):
        entries = by_key.get(key, [])
        published = sum(e.delta for e in entries)
        target = targets.get(key, 0.0)
        if close(published, target):
            unchanged += 1
            continue
        revision = max((e.revision for e in entries), default=-1) + 1
        new.append(
            Entry(
                *key,
                hour=hour,
                revision=revision,
                delta=target - published,
                total=target,
                idempotency_key=idempotency_key(key, hour, revision),
                status="pending",
            )
        )
    return Plan(resend=resend, new=new, unchanged=unchanged)
