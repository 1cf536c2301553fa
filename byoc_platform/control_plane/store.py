"""The control plane's durable state: one SQLite file (WAL) under the data directory.

Tables:
- ``entities``: the current catalog, one row per (environment, kind, id).
- ``changes``: the append-only change feed; ``seq`` is strictly increasing per environment
  because it is allocated as MAX(seq)+1 inside the same ``BEGIN IMMEDIATE`` transaction that
  writes the entity, so a change and its entity are never seen apart.
- ``usage_records`` / ``usage_totals``: every accepted usage report and the running total per
  (customer, resource, feature). A report whose (environment, idempotencyKey) was already seen
  is acknowledged with the original record and not counted again (publishing is idempotent).
- ``usage_events``: raw events reported through GraphQL, deduplicated on
  (environment, customerId, idempotencyKey), like the runtime's dedup key.
- ``meta``: one-off markers (the seed is loaded once per database).

The server and the offline ``apply`` command may open the same file at the same time; SQLite's
write lock and ``busy_timeout`` serialize them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec

from byoc_platform.catalog import ENTITY_TYPES, Change, ChangePage, decode_entity

DB_FILE = "control_plane.db"
DEFAULT_PAGE = 500
MAX_PAGE = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    environment TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL,
    data TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (environment, kind, id)
);
CREATE TABLE IF NOT EXISTS changes (
    environment TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, op TEXT NOT NULL,
    id TEXT NOT NULL, data TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (environment, seq)
);
CREATE TABLE IF NOT EXISTS usage_records (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    environment TEXT NOT NULL,
    idempotency_key TEXT,
    customer_id TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    feature_id TEXT NOT NULL,
    value REAL NOT NULL,
    update_behavior TEXT NOT NULL,
    dimensions TEXT,
    created_at TEXT,
    received_at TEXT NOT NULL,
    resent INTEGER NOT NULL DEFAULT 0,
    UNIQUE (environment, idempotency_key)
);
CREATE TABLE IF NOT EXISTS usage_totals (
    environment TEXT NOT NULL, customer_id TEXT NOT NULL, resource_id TEXT NOT NULL,
    feature_id TEXT NOT NULL, value REAL NOT NULL, records INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (environment, customer_id, resource_id, feature_id)
);
CREATE TABLE IF NOT EXISTS usage_events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    event_name TEXT NOT NULL,
    resource_id TEXT,
    dimensions TEXT,
    timestamp TEXT,
    received_at TEXT NOT NULL,
    resent INTEGER NOT NULL DEFAULT 0,
    UNIQUE (environment, customer_id, idempotency_key)
);
"""

UpdateBehavior = Literal["DELTA", "SET"]


class UnknownEntity(LookupError):
    """A usage report names a customer or feature the environment does not have."""

    def __init__(self, kind: str, id: str, index: int) -> None:
        super().__init__(f"{kind} {id!r} not found (usage #{index})")
        self.kind = kind
        self.id = id
        self.index = index


class Upsert(msgspec.Struct, frozen=True):
    kind: str
    entity: msgspec.Struct


class Delete(msgspec.Struct, frozen=True):
    kind: str
    id: str


CatalogOp = Upsert | Delete


class UsageIn(msgspec.Struct, kw_only=True, frozen=True):
    """One usage report, already validated (see graphql.py)."""

    customerId: str
    featureId: str
    value: float
    updateBehavior: UpdateBehavior = "DELTA"
    idempotencyKey: str | None = None
    resourceId: str | None = None
    dimensions: dict | None = None
    createdAt: str | None = None


class UsageRecord(msgspec.Struct, kw_only=True):
    """An accepted usage report, and the total of its (customer, resource, feature) after it."""

    id: str
    environment: str
    customerId: str
    featureId: str
    resourceId: str | None
    value: float
    updateBehavior: UpdateBehavior
    idempotencyKey: str | None
    dimensions: dict | None
    createdAt: str | None
    receivedAt: str
    resent: int  # how many times the same idempotencyKey came back (and was not counted)
    currentUsage: float | None = None
    duplicate: bool = False  # True on the answer to a re-sent key


class UsageTotal(msgspec.Struct, kw_only=True):
    customerId: str
    resourceId: str | None
    featureId: str
    value: float  # DELTA reports add up; a SET report replaces the total
    records: int  # accepted (counted) reports
    updatedAt: str


class EventIn(msgspec.Struct, kw_only=True, frozen=True):
    """One raw event reported through GraphQL ReportEvent, already validated."""

    customerId: str
    idempotencyKey: str
    eventName: str
    resourceId: str | None = None
    dimensions: dict | None = None
    timestamp: str | None = None


class StoredEvent(msgspec.Struct, kw_only=True):
    environment: str
    customerId: str
    idempotencyKey: str
    eventName: str
    resourceId: str | None
    dimensions: dict | None
    timestamp: str | None
    receivedAt: str
    resent: int


class EventsResult(msgspec.Struct, kw_only=True):
    accepted: int
    duplicates: int


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def kind_of(entity: msgspec.Struct) -> str:
    for kind, cls in ENTITY_TYPES.items():
        if type(entity) is cls:
            return kind
    raise TypeError(f"not a catalog entity: {type(entity).__name__}")


class Store:
    """Thread-safe access to one control-plane database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the seq allocation and
        # the writes that use it hold the write lock together.
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA)

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        return cls(Path(data_dir) / DB_FILE)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---- catalog and change feed -----------------------------------------------------------

    def write_catalog(
        self,
        batches: dict[str, Sequence[CatalogOp]],
        *,
        once_key: str | None = None,
        once_value: str = "",
    ) -> list[Change] | None:
        """Apply catalog ops per environment in ONE transaction; return the appended changes.

        With ``once_key``: do nothing (return None) if that meta key is already set, else set it
        in the same transaction, so a seed is loaded exactly once even if two processes race.
        A delete of an entity that does not exist appends nothing.
        """
        changes: list[Change] = []
        with self._tx() as db:
            if once_key is not None:
                if db.execute("SELECT 1 FROM meta WHERE key=?", (once_key,)).fetchone():
                    return None
                db.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (once_key, once_value))
            at = now_iso()
            for env, ops in batches.items():
                seq = db.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM changes WHERE environment=?", (env,)
                ).fetchone()[0]
                for op in ops:
                    change = self._apply_op(db, env, op, seq + 1, at)
                    if change is not None:
                        seq = change.seq
                        changes.append(change)
        return changes

    @staticmethod
    def _apply_op(
        db: sqlite3.Connection, env: str, op: CatalogOp, seq: int, at: str
    ) -> Change | None:
        if isinstance(op, Upsert):
            entity_id: str = op.entity.id  # type: ignore[attr-defined]
            data = msgspec.to_builtins(op.entity)
            text = _json(data)
            db.execute(
                "INSERT INTO entities(environment, kind, id, data, seq) VALUES (?,?,?,?,?) "
                "ON CONFLICT(environment, kind, id) DO UPDATE SET data=excluded.data, "
                "seq=excluded.seq",
                (env, op.kind, entity_id, text, seq),
            )
            change = Change(
                seq=seq, environment=env, kind=op.kind, op="upsert", id=entity_id, data=data
            )  # type: ignore[arg-type]
        else:
            cur = db.execute(
                "DELETE FROM entities WHERE environment=? AND kind=? AND id=?",
                (env, op.kind, op.id),
            )
            if cur.rowcount == 0:
                return None
            text = "{}"
            change = Change(seq=seq, environment=env, kind=op.kind, op="delete", id=op.id)  # type: ignore[arg-type]
        db.execute(
            "INSERT INTO changes(environment, seq, kind, op, id, data, at) VALUES (?,?,?,?,?,?,?)",
            (env, seq, change.kind, change.op, change.id, text, at),
        )
        return change

    def upsert(self, env: str, entity: msgspec.Struct) -> Change:
        changes = self.write_catalog({env: [Upsert(kind_of(entity), entity)]})
        assert changes
        return changes[0]

    def delete(self, env: str, kind: str, id: str) -> Change | None:
        """Delete one entity; None (and no change) when it does not exist."""
        changes = self.write_catalog({env: [Delete(kind, id)]})
        return changes[0] if changes else None

    def get_entity(self, env: str, kind: str, id: str) -> msgspec.Struct | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT data FROM entities WHERE environment=? AND kind=? AND id=?",
                (env, kind, id),
            ).fetchone()
        return None if row is None else decode_entity(kind, json.loads(row[0]))

    def changes(self, env: str, after: int = 0, limit: int = DEFAULT_PAGE) -> ChangePage:
        """Changes with seq > after, oldest first, at most ``limit`` (capped at MAX_PAGE)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, op, id, data FROM changes WHERE environment=? AND seq>? "
                "ORDER BY seq LIMIT ?",
                (env, after, limit + 1),
            ).fetchall()
        has_more = len(rows) > limit
        page = [
            Change(
                seq=r["seq"],
                environment=env,
                kind=r["kind"],
                op=r["op"],
                id=r["id"],
                data=json.loads(r["data"]),
            )
            for r in rows[:limit]
        ]
        return ChangePage(changes=page, cursor=page[-1].seq if page else after, hasMore=has_more)

    # ---- usage -----------------------------------------------------------------------------

    def report_usages(
        self, env: str, usages: Sequence[UsageIn], *, require_catalog: bool = True
    ) -> list[UsageRecord]:
        """Accept a bulk atomically: all reports are counted (once) or none is.

        Raises UnknownEntity (and writes nothing) when ``require_catalog`` and a report names a
        customer or feature that the environment's catalog does not hold, as Stigg Cloud does.
        """
        out: list[UsageRecord] = []
        with self._tx() as db:
            if require_catalog:
                for i, u in enumerate(usages):
                    for kind, id in (("customer", u.customerId), ("feature", u.featureId)):
                        if not db.execute(
                            "SELECT 1 FROM entities WHERE environment=? AND kind=? AND id=?",
                            (env, kind, id),
                        ).fetchone():
                            raise UnknownEntity(kind, id, i)
            received = now_iso()
            for u in usages:
                out.append(self._report_one(db, env, u, received))
        return out

    def _report_one(
        self, db: sqlite3.Connection, env: str, u: UsageIn, received: str
    ) -> UsageRecord:
        resource = u.resourceId or ""
        if u.idempotencyKey is not None:
            row = db.execute(
                "SELECT * FROM usage_records WHERE environment=? AND idempotency_key=?",
                (env, u.idempotencyKey),
            ).fetchone()
            if row is not None:
                # Already counted: acknowledge with the original record, count nothing.
                db.execute("UPDATE usage_records SET resent=resent+1 WHERE n=?", (row["n"],))
                record = _record(row)
                record.resent += 1
                record.duplicate = True
                record.currentUsage = self._total(
                    db, env, record.customerId, row["resource_id"], record.featureId
                )
                return record
        record_id = str(uuid.uuid4())
        db.execute(
            "INSERT INTO usage_records(id, environment, idempotency_key, customer_id, resource_id,"
            " feature_id, value, update_behavior, dimensions, created_at, received_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                record_id,
                env,
                u.idempotencyKey,
                u.customerId,
                resource,
                u.featureId,
                u.value,
                u.updateBehavior,
                None if u.dimensions is None else _json(u.dimensions),
                u.createdAt,
                received,
            ),
        )
        # DELTA adds to the running total; SET replaces it ("Stigg computes the delta").
        new_value = "value + excluded.value" if u.updateBehavior == "DELTA" else "excluded.value"
        db.execute(
            "INSERT INTO usage_totals(environment, customer_id, resource_id, feature_id, value,"
            " records, updated_at) VALUES (?,?,?,?,?,1,?)"
            " ON CONFLICT(environment, customer_id, resource_id, feature_id) DO UPDATE SET"
            f" value={new_value}, records=records+1, updated_at=excluded.updated_at",
            (env, u.customerId, resource, u.featureId, u.value, received),
        )
        return UsageRecord(
            id=record_id,
            environment=env,
            customerId=u.customerId,
            featureId=u.featureId,
            resourceId=u.resourceId or None,
            value=u.value,
            updateBehavior=u.updateBehavior,
            idempotencyKey=u.idempotencyKey,
            dimensions=u.dimensions,
            createdAt=u.createdAt,
            receivedAt=received,
            resent=0,
            currentUsage=self._total(db, env, u.customerId, resource, u.featureId),
        )

    @staticmethod
    def _total(
        db: sqlite3.Connection, env: str, customer: str, resource: str, feature: str
    ) -> float | None:
        row = db.execute(
            "SELECT value FROM usage_totals WHERE environment=? AND customer_id=? "
            "AND resource_id=? AND feature_id=?",
            (env, customer, resource, feature),
        ).fetchone()
        return None if row is None else row[0]

    def usage_totals(
        self,
        env: str,
        *,
        customer_id: str | None = None,
        feature_id: str | None = None,
        resource_id: str | None = None,
    ) -> list[UsageTotal]:
        where, args = _filters(env, customer_id, feature_id, resource_id)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM usage_totals WHERE {where} "
                "ORDER BY customer_id, resource_id, feature_id",
                args,
            ).fetchall()
        return [
            UsageTotal(
                customerId=r["customer_id"],
                resourceId=r["resource_id"] or None,
                featureId=r["feature_id"],
                value=r["value"],
                records=r["records"],
                updatedAt=r["updated_at"],
            )
            for r in rows
        ]

    def usage_records(
        self,
        env: str,
        *,
        customer_id: str | None = None,
        feature_id: str | None = None,
        resource_id: str | None = None,
    ) -> list[UsageRecord]:
        where, args = _filters(env, customer_id, feature_id, resource_id)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM usage_records WHERE {where} ORDER BY n", args
            ).fetchall()
        return [_record(r) for r in rows]

    # ---- raw events ------------------------------------------------------------------------

    def report_events(self, env: str, events: Sequence[EventIn]) -> EventsResult:
        accepted = duplicates = 0
        with self._tx() as db:
            received = now_iso()
            for e in events:
                # RETURNING tells a fresh insert (resent=0) from a re-sent key (resent>0).
                resent = db.execute(
                    "INSERT INTO usage_events(environment, customer_id, idempotency_key,"
                    " event_name, resource_id, dimensions, timestamp, received_at)"
                    " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(environment, customer_id,"
                    " idempotency_key) DO UPDATE SET resent=resent+1 RETURNING resent",
                    (
                        env,
                        e.customerId,
                        e.idempotencyKey,
                        e.eventName,
                        e.resourceId,
                        None if e.dimensions is None else _json(e.dimensions),
                        e.timestamp,
                        received,
                    ),
                ).fetchone()[0]
                if resent:
                    duplicates += 1
                else:
                    accepted += 1
        return EventsResult(accepted=accepted, duplicates=duplicates)

    def events(self, env: str, *, customer_id: str | None = None) -> list[StoredEvent]:
        where, args = _filters(env, customer_id, None, None)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM usage_events WHERE {where} ORDER BY n", args
            ).fetchall()
        return [
            StoredEvent(
                environment=r["environment"],
                customerId=r["customer_id"],
                idempotencyKey=r["idempotency_key"],
                eventName=r["event_name"],
                resourceId=r["resource_id"],
                dimensions=None if r["dimensions"] is None else json.loads(r["dimensions"]),
                timestamp=r["timestamp"],
                receivedAt=r["received_at"],
                resent=r["resent"],
            )
            for r in rows
        ]


def _filters(
    env: str, customer_id: str | None, feature_id: str | None, resource_id: str | None
) -> tuple[str, list[str]]:
    clauses, args = ["environment=?"], [env]
    for column, value in (
        ("customer_id", customer_id),
        ("feature_id", feature_id),
        ("resource_id", resource_id),
    ):
        if value is not None:
            clauses.append(f"{column}=?")
            args.append(value)
    return " AND ".join(clauses), args


def _record(r: sqlite3.Row) -> UsageRecord:
    return UsageRecord(
        id=r["id"],
        environment=r["environment"],
        customerId=r["customer_id"],
        featureId=r["feature_id"],
        resourceId=r["resource_id"] or None,
        value=r["value"],
        updateBehavior=r["update_behavior"],
        idempotencyKey=r["idempotency_key"],
        dimensions=None if r["dimensions"] is None else json.loads(r["dimensions"]),
        createdAt=r["created_at"],
        receivedAt=r["received_at"],
        resent=r["resent"],
    )
