"""The enforcement local store: one SQL layer over SQLite (WAL) or PostgreSQL.

It persists what the in-memory snapshot needs to come back after a restart: the entities the
control plane published (and the sync cursor, in the same transaction), the usage counters per
(customer, resource, feature, window), budget usage per window, and the identities of the
events already counted (so a replayed ``usage.deduped`` record never counts twice).
The hot path never reads it: the engine reads memory, which is written after each commit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

from byoc_platform.plugins import StartupError

log = logging.getLogger(__name__)

metadata = MetaData()

entities = Table(
    "enf_entities",
    metadata,
    Column("environment", String(200), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("id", String(300), primary_key=True),
    Column("data", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("applied_at", Float, nullable=False),
)

sync_state = Table(
    "enf_sync_state",
    metadata,
    Column("environment", String(200), primary_key=True),
    Column("cursor", BigInteger, nullable=False),
    Column("last_success", Float, nullable=False),
)

usage_counters = Table(
    "enf_usage_counters",
    metadata,
    Column("environment", String(200), primary_key=True),
    Column("customer_id", String(300), primary_key=True),
    Column("resource_id", String(300), primary_key=True),  # "" = customer level
    Column("feature_id", String(300), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),  # 0 = never resets
    Column("window_end", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

budget_usage = Table(
    "enf_budget_usage",
    metadata,
    Column("environment", String(200), primary_key=True),
    Column("budget_id", String(300), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("window_end", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
)

CLAIM_CHUNK = 500  # identities per lookup (SQLite allows 32,766 bound parameters)

counted_events = Table(
    "enf_counted_events",
    metadata,
    Column("environment", String(200), primary_key=True),
    Column("customer_id", String(300), primary_key=True),
    Column("idempotency_key", String(300), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

# What a REST-created grant carries that the ledger does not model (returned by listings).
grant_extras = Table(
    "enf_grant_extras",
    metadata,
    Column("environment", String(200), primary_key=True),
    Column("grant_id", String(300), primary_key=True),
    Column("data", Text, nullable=False),
)


@dataclass(frozen=True, slots=True)
class CounterKey:
    environment: str
    customer_id: str
    resource_id: str
    feature_id: str
    window_start: int


@dataclass(frozen=True, slots=True)
class BudgetKey:
    environment: str
    budget_id: str
    window_start: int


@dataclass(frozen=True, slots=True)
class StoredEntity:
    environment: str
    kind: str
    id: str
    data: dict
    applied_at: float


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL: readers never block the writer; NORMAL sync is durable across process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10)


def integer_columns(conn: Connection) -> list[tuple[str, str]]:
    """(table, column) of every 32-bit integer column of the schema (PostgreSQL)."""
    rows = conn.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type = 'integer'"
        )
    )
    return [(row.table_name, row.column_name) for row in rows]


def widen_integer_columns(engine: Engine) -> None:
    """PostgreSQL stores created with 32-bit columns: cursors, change sequence numbers and
    window bounds (epoch seconds, past 2038) are 64-bit now. SQLite integers always were."""
    wanted = {
        (table.name, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, BigInteger)
    }
    with engine.begin() as conn:
        for table_name, column_name in integer_columns(conn):
            if (table_name, column_name) in wanted:
                conn.execute(
                    text(f'ALTER TABLE "{table_name}" ALTER COLUMN "{column_name}" TYPE BIGINT')
                )


class StoreInUse(StartupError):
    """Another runtime instance holds this store (PostgreSQL)."""


def claim(engine: Engine) -> Connection:
    """Hold a session-level advisory lock of the database for the store's lifetime.

    Each runtime instance keeps its usage counters in memory, fed by its own consumer; two
    instances on one store would add up each other's writes against different memories
    (a SET computed from one instance's value, cursors moving back). The lock makes that a
    clear start-up error instead; it goes with the connection when the process dies."""
    conn = engine.connect()
    held = conn.execute(text("SELECT pg_try_advisory_lock(7205523, 0)")).scalar()
    conn.commit()  # the lock outlives the transaction; no idle transaction is left open
    if not held:
        conn.close()
        engine.dispose()
        raise StoreInUse(
            "the enforcement store (enforcement.database_url) is in use by another runtime "
            "instance: each instance needs a store of its own (its usage counters live in "
            "its memory); share only the ledger (ledger.database_url)"
        )
    return conn


class Store:
    """Typed reads and writes of the local store; writes are serialised in-process."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._owner = claim(self.engine) if self.dialect == "postgresql" else None
        # On PostgreSQL the outcome comes from RETURNING: psycopg's rowcount of this statement
        # is -1, which read as "already counted" for every event (F60). SQLite's rowcount is
        # right and ~25 % cheaper per new event than RETURNING (bench/counters_reread.py).
        self._claim_statement = self._insert(counted_events).on_conflict_do_nothing()
        self._claim_returns = self.dialect == "postgresql"
        if self._claim_returns:
            self._claim_statement = self._claim_statement.returning(
                counted_events.c.idempotency_key
            )
        metadata.create_all(self.engine)
        if self.dialect == "postgresql":
            widen_integer_columns(self.engine)
        # One writer at a time inside this process: SQLite allows one anyway, and memory is
        # updated right after each commit under the same lock, so memory follows commit order.
        self.write_lock = threading.RLock()

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None
        self.engine.dispose()

    def _insert(self, table: Table):  # type: ignore[no-untyped-def]
        return (postgresql if self.dialect == "postgresql" else sqlite).insert(table)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.write_lock, self.engine.begin() as conn:
            yield conn

    # --- entities and sync cursor --------------------------------------------------------

    def apply_changes(
        self, environment: str, changes: Iterable[tuple[int, str, str, str, dict]], cursor: int
    ) -> float:
        """Persist (seq, kind, op, id, data) changes and the new cursor atomically."""
        now = time.time()
        with self.transaction() as conn:
            for seq, kind, op, entity_id, data in changes:
                if op == "delete":
                    conn.execute(
                        delete(entities).where(
                            entities.c.environment == environment,
                            entities.c.kind == kind,
                            entities.c.id == entity_id,
                        )
                    )
                    continue
                stmt = self._insert(entities).values(
                    environment=environment,
                    kind=kind,
                    id=entity_id,
                    data=json.dumps(data),
                    seq=seq,
                    applied_at=now,
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["environment", "kind", "id"],
                        set_={
                            "data": stmt.excluded.data,
                            "seq": stmt.excluded.seq,
                            "applied_at": stmt.excluded.applied_at,
                        },
                    )
                )
            self._set_cursor(conn, environment, cursor, now)
        return now

    def _set_cursor(self, conn: Connection, environment: str, cursor: int, now: float) -> None:
        stmt = self._insert(sync_state).values(
            environment=environment, cursor=cursor, last_success=now
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["environment"],
                set_={"cursor": stmt.excluded.cursor, "last_success": stmt.excluded.last_success},
            )
        )

    def mark_synced(self, environment: str, cursor: int) -> float:
        now = time.time()
        with self.transaction() as conn:
            self._set_cursor(conn, environment, cursor, now)
        return now

    def cursor(self, environment: str) -> tuple[int, float | None]:
        """(cursor, last successful sync time) of an environment; (0, None) if never synced."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sync_state.c.cursor, sync_state.c.last_success).where(
                    sync_state.c.environment == environment
                )
            ).first()
        return (int(row[0]), float(row[1])) if row else (0, None)

    def load_entities(self) -> list[StoredEntity]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    entities.c.environment,
                    entities.c.kind,
                    entities.c.id,
                    entities.c.data,
                    entities.c.applied_at,
                ).order_by(entities.c.seq)
            ).all()
        return [StoredEntity(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    # --- counters ------------------------------------------------------------------------

    def add_counters(
        self,
        conn: Connection,
        deltas: dict[CounterKey, tuple[int, float]],
        budget_deltas: dict[BudgetKey, tuple[int, float]],
        now: float,
    ) -> None:
        """Add (window_end, delta) to each counter, inside the caller's transaction."""
        for key, (window_end, delta) in deltas.items():
            stmt = self._insert(usage_counters).values(
                environment=key.environment,
                customer_id=key.customer_id,
                resource_id=key.resource_id,
                feature_id=key.feature_id,
                window_start=key.window_start,
                window_end=window_end,
                value=delta,
                updated_at=now,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[
                        "environment",
                        "customer_id",
                        "resource_id",
                        "feature_id",
                        "window_start",
                    ],
                    set_={
                        "value": usage_counters.c.value + stmt.excluded.value,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
            )
        for key, (window_end, delta) in budget_deltas.items():
            stmt = self._insert(budget_usage).values(
                environment=key.environment,
                budget_id=key.budget_id,
                window_start=key.window_start,
                window_end=window_end,
                value=delta,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["environment", "budget_id", "window_start"],
                    set_={"value": budget_usage.c.value + stmt.excluded.value},
                )
            )

    def claimed(
        self, conn: Connection, environment: str, identities: set[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which (customer, idempotency key) identities are already counted: one query per
        chunk, where claiming them one by one to find out cost ~90 us each (a new runtime
        pod re-reads the retained topic, every event of it already counted by the replay)."""
        by_customer: dict[str, list[str]] = {}
        for customer, key in identities:
            by_customer.setdefault(customer, []).append(key)
        found: set[tuple[str, str]] = set()
        for customer, keys in by_customer.items():
            for i in range(0, len(keys), CLAIM_CHUNK):
                # Equality on the primary key's first two columns: one index search per key
                # (a row-value IN list made SQLite scan all the environment's claims).
                rows = conn.execute(
                    select(counted_events.c.idempotency_key).where(
                        counted_events.c.environment == environment,
                        counted_events.c.customer_id == customer,
                        counted_events.c.idempotency_key.in_(keys[i : i + CLAIM_CHUNK]),
                    )
                ).scalars()
                found.update((customer, key) for key in rows)
        return found

    def claim_event(
        self, conn: Connection, environment: str, customer_id: str, key: str, expires_at: float
    ) -> bool:
        """Record an event as counted; False when it already was (a replay)."""
        # One statement built once, parameters per call: building it per event (values(),
        # coercions, cache key) cost more than SQLite's insert.
        params = {
            "environment": environment,
            "customer_id": customer_id,
            "idempotency_key": key,
            "expires_at": expires_at,
        }
        result = conn.execute(self._claim_statement, params)
        return result.first() is not None if self._claim_returns else result.rowcount == 1

    def load_counters(self, since: float) -> tuple[dict[CounterKey, float], dict[BudgetKey, float]]:
        """Counters whose window ends after ``since`` (or never resets)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(usage_counters).where(
                    (usage_counters.c.window_end == 0) | (usage_counters.c.window_end > since)
                )
            ).all()
            budget_rows = conn.execute(
                select(budget_usage).where(budget_usage.c.window_end > since)
            ).all()
        counters = {
            CounterKey(
                r.environment, r.customer_id, r.resource_id, r.feature_id, r.window_start
            ): r.value
            for r in rows
        }
        budgets = {
            BudgetKey(r.environment, r.budget_id, r.window_start): r.value for r in budget_rows
        }
        return counters, budgets

    def put_grant_extras(self, environment: str, grant_id: str, data: dict) -> None:
        stmt = self._insert(grant_extras).values(
            environment=environment, grant_id=grant_id, data=json.dumps(data)
        )
        with self.transaction() as conn:
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["environment", "grant_id"], set_={"data": stmt.excluded.data}
                )
            )

    def grant_extras(self, environment: str, grant_ids: list[str]) -> dict[str, dict]:
        if not grant_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(grant_extras.c.grant_id, grant_extras.c.data).where(
                    grant_extras.c.environment == environment,
                    grant_extras.c.grant_id.in_(grant_ids),
                )
            ).all()
        return {r[0]: json.loads(r[1]) for r in rows}

    def is_cold(self, environment: str) -> bool:
        """True when the store never counted anything for the environment."""
        with self.engine.connect() as conn:
            counted = conn.execute(
                select(counted_events.c.customer_id)
                .where(counted_events.c.environment == environment)
                .limit(1)
            ).first()
            counter = conn.execute(
                select(usage_counters.c.customer_id)
                .where(usage_counters.c.environment == environment)
                .limit(1)
            ).first()
        return counted is None and counter is None

    def prune(self, now: float, keep_s: float) -> int:
        """Forget counted-event identities past their expiry and windows long over."""
        with self.transaction() as conn:
            n = conn.execute(delete(counted_events).where(counted_events.c.expires_at < now))
            conn.execute(
                delete(usage_counters).where(
                    (usage_counters.c.window_end != 0)
                    & (usage_counters.c.window_end < now - keep_s)
                )
            )
            conn.execute(delete(budget_usage).where(budget_usage.c.window_end < now - keep_s))
        return n.rowcount or 0
