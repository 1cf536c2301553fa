"""One write transaction: locked wallets, their state in memory, and the writes to flush.

Operations (ops.py) read and change the in-memory state through this unit of work; the
transfers, events and rows they produce are flushed with a few ``executemany`` statements at
the end, in the same transaction. Several operations share one unit when the committer batches
them (group commit); each sees the effects of the ones before it.

Rules every operation follows, so a batch stays correct when one of them is refused:
- decide first (reads, validation, draw plan), raise a LedgerError only before the first change;
- sweeping (expiring a due grant or reservation) is a complete change of its own, so it may
  happen before a refusal and is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import Connection, and_, bindparam, or_, select, text

from enforcement.ledger import schema
from enforcement.ledger.driver import Query, executemany, sqlite_driver
from enforcement.ledger.ids import hid
from enforcement.ledger.schema import accounts, consumptions, grants, reservations, wallets
from enforcement.ledger.state import (
    ConsumptionRecord,
    GrantState,
    ReservationState,
    WalletState,
)

_json = msgspec.json.encode
_unjson = msgspec.json.decode

# --- prepared statements (built once: SQLAlchemy caches their compiled form) -------------

_a = accounts.alias("a")
HOLD_ALIAS = _h = accounts.alias("h")
_GRANT_COLUMNS = [c for c in grants.c if c.name != "seq"]
GRANT_SELECT = select(
    *_GRANT_COLUMNS,
    _a.c.debits_posted.label("a_debits"),
    _a.c.credits_posted.label("a_credits"),
    _h.c.debits_posted.label("h_debits"),
    _h.c.credits_posted.label("h_credits"),
).select_from(
    grants.join(_a, _a.c.id == grants.c.account_id).join(_h, _h.c.id == grants.c.hold_account_id)
)
# Only grants that can still matter for money: spendable balance, or credits on hold.
WALLET_GRANTS = GRANT_SELECT.where(
    grants.c.wallet_id == bindparam("w"),
    or_(
        and_(
            grants.c.voided_us.is_(None),
            grants.c.expired_us.is_(None),
            _a.c.credits_posted > _a.c.debits_posted,
        ),
        _h.c.credits_posted > _h.c.debits_posted,
    ),
)
GRANT_BY_ID = GRANT_SELECT.where(
    grants.c.environment == bindparam("e"), grants.c.grant_id == bindparam("g")
)
WALLET_ACCOUNTS = (
    select(
        wallets.c.environment,
        wallets.c.customer_id,
        wallets.c.currency_id,
        wallets.c.resource_id,
        accounts.c.kind,
        accounts.c.id,
        accounts.c.debits_posted,
        accounts.c.credits_posted,
    )
    .select_from(wallets.join(accounts, accounts.c.wallet_id == wallets.c.id))
    .where(wallets.c.id == bindparam("w"), accounts.c.kind.in_(schema.WALLET_ACCOUNT_KINDS))
)
LOCK_WALLETS = (
    select(wallets.c.id)
    .where(wallets.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(wallets.c.id)
    .with_for_update()
)
# The three reads of a consumption or reservation batch: run by the driver on SQLite (driver.py).
DUE_RESERVATIONS = Query(
    select(reservations).where(
        reservations.c.wallet_id == bindparam("w"),
        reservations.c.status == "ACTIVE",
        reservations.c.expires_us <= bindparam("now"),
    )
)
RESERVATIONS_BY_ID = Query(
    select(reservations).where(
        reservations.c.environment == bindparam("e"),
        reservations.c.reservation_id.in_(bindparam("ids", expanding=True)),
    )
)
CONSUMPTIONS_BY_KEY = Query(
    select(
        consumptions.c.idempotency_key,
        consumptions.c.wallet_id,
        consumptions.c.currency_id,
        consumptions.c.resource_id,
        consumptions.c.amount,
        consumptions.c.entries,
        consumptions.c.timestamp_us,
    ).where(
        consumptions.c.environment == bindparam("e"),
        consumptions.c.customer_id == bindparam("c"),
        consumptions.c.idempotency_key.in_(bindparam("keys", expanding=True)),
    )
)
APPLY_DELTAS = (
    accounts.update()
    .where(accounts.c.id == bindparam("k_id"))
    .values(
        debits_posted=accounts.c.debits_posted + bindparam("v_debits"),
        credits_posted=accounts.c.credits_posted + bindparam("v_credits"),
    )
)
_GRANT_MUTABLE = (
    "display_name",
    "priority",
    "expire_us",
    "payment_pending",
    "issued",
    "consumed",
    "voided_us",
    "expired_us",
    "updated_us",
)
UPDATE_GRANT = (
    grants.update()
    .where(grants.c.environment == bindparam("k_env"), grants.c.grant_id == bindparam("k_gid"))
    .values({name: bindparam(f"v_{name}") for name in _GRANT_MUTABLE})
)
_RESERVATION_MUTABLE = ("status", "consumed", "resolved_us")
UPDATE_RESERVATION = (
    reservations.update()
    .where(
        reservations.c.environment == bindparam("k_env"),
        reservations.c.reservation_id == bindparam("k_rid"),
    )
    .values({name: bindparam(f"v_{name}") for name in _RESERVATION_MUTABLE})
)
INSERT_ACCOUNTS = accounts.insert()
INSERT_GRANTS = grants.insert()
# Two-key advisory locks: a key space apart from the schema's one-key lock (schema.py).
LISTING_ORDER_LOCK = text("SELECT pg_advisory_xact_lock(7205522, :key)")


def listing_lock_key(environment: str) -> int:
    """A signed 32-bit key per environment (a collision only serialises two environments)."""
    digest = hashlib.blake2b(environment.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


INSERT_TRANSFERS = schema.transfers.insert()
INSERT_CONSUMPTIONS = consumptions.insert()
INSERT_RESERVATIONS = reservations.insert()
INSERT_EVENTS = schema.ledger_events.insert()


class _Bulk:
    """An INSERT/UPDATE compiled once per dialect and run as one driver-level call.

    The flush writes a few hundred rows per group commit; SQLAlchemy's per-row parameter
    processing cost more than SQLite's own work, so the statement (still generated from the
    table metadata) is handed to the driver directly; errors are still wrapped by SQLAlchemy.
    SQLite: ``executemany`` with tuples on the sqlite3 connection itself (driver.py).
    PostgreSQL: an INSERT becomes ONE ``INSERT ... SELECT * FROM unnest(<one array per
    column>)`` (one round trip, a constant statement the driver prepares once); an UPDATE runs
    as an executemany (psycopg pipelines it).
    """

    def __init__(self, statement: Any, table: Any = None) -> None:
        self._statement = statement
        self._table = table  # set for inserts
        self._columns = None if table is None else [c.name for c in table.c if c.name != "seq"]
        self._compiled: dict[str, tuple[str, Callable[[dict[str, Any]], Any] | None]] = {}
        self._unnest: str | None = None  # PostgreSQL: INSERT ... SELECT * FROM unnest(...)

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if self._table is not None and conn.dialect.name == "postgresql":
            self._run_multirow(conn, rows)
            return
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            done = self._statement.compile(dialect=conn.dialect, column_keys=self._columns)
            positions = done.positiontup
            # itemgetter of 2+ keys returns a tuple (every statement here has several).
            assert positions is None or len(positions) > 1
            getter = itemgetter(*positions) if positions else None
            compiled = self._compiled[conn.dialect.name] = (str(done), getter)
        sql, getter = compiled
        raw = sqlite_driver(conn)
        if raw is not None:  # sqlite3 (positional): tuples in the compiled order, by the driver
            assert getter is not None
            executemany(raw, sql, [getter(row) for row in rows])
        elif getter is None:  # named parameters (psycopg): the dicts as they are
            conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]
        else:
            conn.exec_driver_sql(sql, [getter(row) for row in rows])

    def _run_multirow(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        # One short, constant statement (psycopg caches and prepares it): one array per column.
        if self._unnest is None:
            quote = conn.dialect.identifier_preparer.quote
            columns = [self._table.c[name] for name in self._columns]
            casts = ", ".join(f"%s::{c.type.compile(dialect=conn.dialect)}[]" for c in columns)
            names = ", ".join(quote(c.name) for c in columns)
            self._unnest = (
                f"INSERT INTO {quote(self._table.name)} ({names}) SELECT * FROM unnest({casts})"
            )
        conn.exec_driver_sql(
            self._unnest, tuple([row[name] for row in rows] for name in self._columns)
        )


def _insert(table: Any) -> _Bulk:
    return _Bulk(table.insert(), table)


BULK_ACCOUNTS = _insert(accounts)
BULK_GRANTS = _insert(grants)
BULK_TRANSFERS = _insert(schema.transfers)
BULK_CONSUMPTIONS = _insert(consumptions)
BULK_RESERVATIONS = _insert(reservations)
BULK_EVENTS = _insert(schema.ledger_events)
BULK_DELTAS = _Bulk(APPLY_DELTAS)
BULK_GRANT_UPDATES = _Bulk(UPDATE_GRANT)
BULK_RESERVATION_UPDATES = _Bulk(UPDATE_RESERVATION)


def grant_from_row(row: Any) -> GrantState:
    m = row._mapping
    return GrantState(
        environment=m["environment"],
        grant_id=m["grant_id"],
        wallet_id=m["wallet_id"],
        customer_id=m["customer_id"],
        currency_id=m["currency_id"],
        resource_id=m["resource_id"],
        account_id=m["account_id"],
        hold_account_id=m["hold_account_id"],
        amount=m["amount"],
        grant_type=m["grant_type"],
        priority=m["priority"],
        effective_us=m["effective_us"],
        expire_us=m["expire_us"],
        created_us=m["created_us"],
        display_name=m["display_name"],
        payment_pending=bool(m["payment_pending"]),
        issued=bool(m["issued"]),
        consumed=m["consumed"],
        voided_us=m["voided_us"],
        expired_us=m["expired_us"],
        updated_us=m["updated_us"],
        balance=m["a_credits"] - m["a_debits"],
        held=m["h_credits"] - m["h_debits"],
    )


def reservation_from_row(row: Any) -> ReservationState:
    """From a SQLAlchemy row or a driver row (driver.Query): attributes by column name."""
    return ReservationState(
        environment=row.environment,
        reservation_id=row.reservation_id,
        wallet_id=row.wallet_id,
        customer_id=row.customer_id,
        currency_id=row.currency_id,
        resource_id=row.resource_id,
        amount=row.amount,
        parts=[(g, u) for g, u in _unjson(row.parts)],
        status=row.status,
        consumed=row.consumed,
        feature_id=row.feature_id,
        metadata=row.metadata,
        created_us=row.created_us,
        expires_us=row.expires_us,
        resolved_us=row.resolved_us,
    )


class Unit:
    """The state and pending writes of one write transaction (see the module docstring)."""

    def __init__(self, conn: Connection, carried: dict[str, WalletState] | None = None) -> None:
        self.conn = conn
        self.wallets: dict[str, WalletState] = {}
        # Wallets as an earlier transaction of this connection committed them, known to be
        # current (commit.WalletCarry): used instead of reading them again.
        self._carried = carried or {}
        self._locked: set[str] = set()
        self.grants: dict[tuple[str, str], GrantState] = {}
        self.reservations: dict[tuple[str, str], ReservationState | None] = {}
        self.consumptions: dict[tuple[str, str, str], ConsumptionRecord | None] = {}
        self.expired_grants = 0
        self.expired_reservations = 0
        self._new_accounts: list[dict[str, Any]] = []
        self._new_grants: dict[tuple[str, str], GrantState] = {}
        self._dirty_grants: dict[tuple[str, str], GrantState] = {}
        self._new_reservations: dict[tuple[str, str], ReservationState] = {}
        self._dirty_reservations: dict[tuple[str, str], ReservationState] = {}
        self._new_consumptions: list[dict[str, Any]] = []
        self._transfers: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._deltas: dict[str, list[int]] = {}

    # --- locking and loading -----------------------------------------------------------

    def lock(self, wallet_ids: Iterable[str]) -> None:
        """PostgreSQL: lock the wallets' rows in id order (one statement, so no deadlock
        between instances). SQLite: BEGIN IMMEDIATE already holds the database's write lock."""
        ids = sorted(set(wallet_ids))
        if ids and self.conn.dialect.name == "postgresql":
            self._locked.update(row.id for row in self.conn.execute(LOCK_WALLETS, {"ids": ids}))

    def wallet(self, wallet_id: str, now_us: int) -> WalletState | None:
        """The locked wallet's state, loaded once per transaction and swept for ``now_us``.
        None if the wallet does not exist (yet): nothing was ever granted into it."""
        wallet = self.wallets.get(wallet_id)
        if wallet is not None:
            self.sweep_grants(wallet, now_us)
            return wallet
        carried = self._carried.pop(wallet_id, None)
        if carried is not None and self._adopt(carried):
            self.sweep_grants(carried, now_us)
            self._resolve_due_reservations(carried, now_us)
            return carried
        if self.conn.dialect.name == "postgresql" and wallet_id not in self._locked:
            # Created by another instance after this transaction took its locks: lock it now
            # (out of order, so a deadlock is possible; PostgreSQL breaks it and we retry).
            self._locked.update(
                row.id for row in self.conn.execute(LOCK_WALLETS, {"ids": [wallet_id]})
            )
        rows = self.conn.execute(WALLET_ACCOUNTS, {"w": wallet_id}).all()
        if not rows:
            return None
        first = rows[0]
        wallet = WalletState(
            id=wallet_id,
            environment=first.environment,
            customer_id=first.customer_id,
            currency_id=first.currency_id,
            resource_id=first.resource_id,
            accounts={row.kind: row.id for row in rows},
            issued_total=next(
                r.debits_posted - r.credits_posted for r in rows if r.kind == "issuance"
            ),
        )
        self.wallets[wallet_id] = wallet
        for row in self.conn.execute(WALLET_GRANTS, {"w": wallet_id}):
            key = (row.environment, row.grant_id)
            grant = self.grants.get(key)
            if grant is None:
                grant = self.grants[key] = grant_from_row(row)
            wallet.grants[grant.grant_id] = grant
        # Grants read earlier in this transaction (and maybe changed in memory) belong here too.
        for grant in self.grants.values():
            if grant.wallet_id == wallet_id:
                wallet.grants.setdefault(grant.grant_id, grant)
        self.sweep_grants(wallet, now_us)
        self._resolve_due_reservations(wallet, now_us)
        return wallet

    def _adopt(self, wallet: WalletState) -> bool:
        """Take a carried wallet into this transaction, unless one of its grants was already
        read here (then it is read again, so that there is one state per grant)."""
        keys = [(g.environment, g.grant_id) for g in wallet.grants.values()]
        if any(key in self.grants for key in keys):
            return False
        self.wallets[wallet.id] = wallet
        for key, grant in zip(keys, wallet.grants.values(), strict=True):
            self.grants[key] = grant
        return True

    def _resolve_due_reservations(self, wallet: WalletState, now_us: int) -> None:
        """Reservations of the wallet whose TTL passed expire now (lazily, on its next write)."""
        for row in DUE_RESERVATIONS.rows(self.conn, {"w": wallet.id, "now": now_us}):
            key = (row.environment, row.reservation_id)
            reservation = self.reservations.get(key)
            if reservation is None:
                reservation = self.reservations[key] = reservation_from_row(row)
            if reservation.status == "ACTIVE" and reservation.expires_us <= now_us:
                self.resolve(wallet, reservation, 0, [], now_us, "EXPIRED")

    def find_grant(self, environment: str, grant_id: str) -> GrantState | None:
        key = (environment, grant_id)
        grant = self.grants.get(key)
        if grant is None:
            row = self.conn.execute(GRANT_BY_ID, {"e": environment, "g": grant_id}).first()
            if row is None:
                return None
            grant = self.grants[key] = grant_from_row(row)
        wallet = self.wallets.get(grant.wallet_id)
        if wallet is not None and grant.grant_id not in wallet.grants:
            wallet.grants[grant.grant_id] = grant
            wallet.changed()
        return grant

    def find_reservation(self, environment: str, reservation_id: str) -> ReservationState | None:
        key = (environment, reservation_id)
        if key not in self.reservations:
            self.prefetch_reservations(environment, [reservation_id])
        return self.reservations[key]

    def prefetch_reservations(self, environment: str, ids: list[str]) -> None:
        missing = [i for i in ids if (environment, i) not in self.reservations]
        if not missing:
            return
        for i in missing:
            self.reservations[(environment, i)] = None
        for row in RESERVATIONS_BY_ID.rows(self.conn, {"e": environment, "ids": missing}):
            self.reservations[(environment, row.reservation_id)] = reservation_from_row(row)

    def find_consumption(
        self, environment: str, customer_id: str, key: str
    ) -> ConsumptionRecord | None:
        full = (environment, customer_id, key)
        if full not in self.consumptions:
            self.prefetch_consumptions(environment, customer_id, [key])
        return self.consumptions[full]

    def prefetch_consumptions(self, environment: str, customer_id: str, keys: list[str]) -> None:
        missing = [k for k in keys if (environment, customer_id, k) not in self.consumptions]
        if not missing:
            return
        for k in missing:
            self.consumptions[(environment, customer_id, k)] = None
        params = {"e": environment, "c": customer_id, "keys": missing}
        for row in CONSUMPTIONS_BY_KEY.rows(self.conn, params):
            self.consumptions[(environment, customer_id, row.idempotency_key)] = ConsumptionRecord(
                environment=environment,
                customer_id=customer_id,
                idempotency_key=row.idempotency_key,
                wallet_id=row.wallet_id,
                currency_id=row.currency_id,
                resource_id=row.resource_id,
                amount=row.amount,
                entries=[(g, u) for g, u in _unjson(row.entries)],
                timestamp_us=row.timestamp_us,
            )

    # --- changes ---------------------------------------------------------------------------

    def post(
        self,
        wallet: WalletState,
        debit: str,
        credit: str,
        units: int,
        kind: str,
        ref: str,
        index: int,
        grant_id: str | None,
        now_us: int,
        scope: str = "",
    ) -> None:
        """Record one double-entry transfer. Its id derives from (kind, scope, ref, index):
        ``scope`` is the customer for consumptions, whose keys are unique per customer."""
        self._transfers.append(
            {
                "id": hid("transfer", wallet.environment, kind, scope, ref, index),
                "environment": wallet.environment,
                "wallet_id": wallet.id,
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount": units,
                "kind": kind,
                "ref": ref,
                "grant_id": grant_id,
                "timestamp_us": now_us,
            }
        )
        delta = self._deltas.get(debit)
        if delta is None:
            delta = self._deltas[debit] = [0, 0]
        delta[0] += units
        delta = self._deltas.get(credit)
        if delta is None:
            delta = self._deltas[credit] = [0, 0]
        delta[1] += units

    def event(
        self,
        wallet: WalletState,
        event_type: str,
        grant_id: str,
        units: int,
        ref: str,
        index: int,
        now_us: int,
        *,
        reservation_id: str | None = None,
        feature_id: str | None = None,
        hold_returned: int | None = None,
        breakdown: list[tuple[str, str, int]] | None = None,
        metadata: str | None = None,
        event_id: str | None = None,
        scope: str = "",
    ) -> None:
        event_id = event_id or hid("event", wallet.environment, event_type, scope, ref, index)
        self._events.append(
            {
                "event_id": event_id,
                "environment": wallet.environment,
                "wallet_id": wallet.id,
                "customer_id": wallet.customer_id,
                "currency_id": wallet.currency_id,
                "resource_id": wallet.resource_id,
                "grant_id": grant_id,
                "event_type": event_type,
                "amount": units,
                "reservation_id": reservation_id,
                "feature_id": feature_id,
                "hold_returned": hold_returned,
                "breakdown": None if breakdown is None else _json(breakdown).decode(),
                "metadata": metadata,
                "timestamp_us": now_us,
            }
        )

    def add_grant(self, wallet: WalletState, grant: GrantState) -> None:
        key = (grant.environment, grant.grant_id)
        self.grants[key] = grant
        self._new_grants[key] = grant
        wallet.grants[grant.grant_id] = grant
        wallet.changed()
        for account_id, kind in (
            (grant.account_id, schema.GRANT),
            (grant.hold_account_id, schema.HOLD),
        ):
            self._new_accounts.append(
                {
                    "id": account_id,
                    "wallet_id": wallet.id,
                    "kind": kind,
                    "grant_id": grant.grant_id,
                    "debits_posted": 0,
                    "credits_posted": 0,
                }
            )

    def touch_grant(self, grant: GrantState, now_us: int) -> None:
        grant.updated_us = now_us
        key = (grant.environment, grant.grant_id)
        if key not in self._new_grants:
            self._dirty_grants[key] = grant

    def add_reservation(self, reservation: ReservationState) -> None:
        key = (reservation.environment, reservation.reservation_id)
        self.reservations[key] = reservation
        self._new_reservations[key] = reservation

    def touch_reservation(self, reservation: ReservationState) -> None:
        key = (reservation.environment, reservation.reservation_id)
        if key not in self._new_reservations:
            self._dirty_reservations[key] = reservation

    def add_consumption(self, record: ConsumptionRecord, row: dict[str, Any]) -> None:
        key = (record.environment, record.customer_id, record.idempotency_key)
        self.consumptions[key] = record
        self._new_consumptions.append(row)

    # --- movements shared by several operations ------------------------------------------

    def sweep_grants(self, wallet: WalletState, now_us: int) -> None:
        if not wallet.may_have_due(now_us):
            return
        for grant in list(wallet.grants.values()):
            if grant.due(now_us):
                self.expire_grant(wallet, grant, now_us)

    def expire_grant(self, wallet: WalletState, grant: GrantState, now_us: int) -> None:
        """Move what is left in the grant to the expired sink (holds stay until resolved)."""
        if grant.finished():
            return
        if grant.balance > 0:
            units = grant.balance
            ref = grant.grant_id
            self.post(
                wallet,
                grant.account_id,
                wallet.sink(schema.EXPIRED),
                units,
                "expire",
                ref,
                0,
                ref,
                now_us,
            )
            grant.balance = 0
            self.event(wallet, "CREDITS_EXPIRED", ref, -units, ref, 0, now_us)
            self.expired_grants += 1
        grant.expired_us = now_us
        self.touch_grant(grant, now_us)
        wallet.changed()

    def resolve(
        self,
        wallet: WalletState,
        reservation: ReservationState,
        consumed_from_hold: int,
        excess: list[tuple[GrantState, int]],
        now_us: int,
        status: str,
    ) -> tuple[int, list[tuple[str, int]]]:
        """Close a reservation exactly once: charge ``consumed_from_hold`` to the held credits
        in the order they were held, give the rest back to the grant it came from (or to the
        expired / voided sink if that grant died meanwhile), then consume ``excess`` (a plan
        drawn by the caller). Returns (units returned to live grants, consumed per grant)."""
        env = wallet.environment
        ref = reservation.reservation_id
        index = 0
        remaining = consumed_from_hold
        returned = 0
        consumed: list[tuple[str, int]] = []
        breakdown: list[tuple[str, str, int]] = []
        for grant_id, held in reservation.parts:
            grant = self.find_grant(env, grant_id)
            assert grant is not None, f"reservation {ref} holds credits of unknown grant {grant_id}"
            take = min(held, remaining)
            remaining -= take
            if take:
                self.post(
                    wallet,
                    grant.hold_account_id,
                    wallet.sink(schema.CONSUMED),
                    take,
                    "resolve",
                    ref,
                    index,
                    grant_id,
                    now_us,
                )
                index += 1
                grant.held -= take
                grant.consumed += take
                consumed.append((grant_id, take))
                breakdown.append(("CREDITS_CONSUMED", grant_id, -take))
            back = held - take
            if back:
                if grant.due(now_us):
                    self.expire_grant(wallet, grant, now_us)
                if grant.live(now_us):
                    target = grant.account_id
                    grant.balance += back
                    returned += back
                else:
                    dead = "voided" if grant.voided_us is not None else "expired"
                    target = wallet.sink(dead)
                    breakdown.append((f"CREDITS_{dead.upper()}", grant_id, -back))
                self.post(
                    wallet,
                    grant.hold_account_id,
                    target,
                    back,
                    "resolve",
                    ref,
                    index,
                    grant_id,
                    now_us,
                )
                index += 1
                grant.held -= back
            self.touch_grant(grant, now_us)
        excess_total = 0
        for grant, take in excess:
            self.post(
                wallet,
                grant.account_id,
                wallet.sink(schema.CONSUMED),
                take,
                "resolve",
                ref,
                index,
                grant.grant_id,
                now_us,
            )
            index += 1
            grant.balance -= take
            grant.consumed += take
            excess_total += take
            consumed.append((grant.grant_id, take))
            breakdown.append(("CREDITS_CONSUMED", grant.grant_id, -take))
            self.touch_grant(grant, now_us)
        reservation.status = status
        reservation.consumed = consumed_from_hold + excess_total
        reservation.resolved_us = now_us
        self.touch_reservation(reservation)
        event_type = (
            "CREDITS_RESERVATION_EXPIRED" if status == "EXPIRED" else "CREDITS_RESERVATION_RELEASED"
        )
        first_grant = reservation.parts[0][0] if reservation.parts else ""
        self.event(
            wallet,
            event_type,
            first_grant,
            returned - excess_total,
            ref,
            0,
            now_us,
            reservation_id=ref,
            feature_id=reservation.feature_id,
            hold_returned=reservation.amount,
            breakdown=breakdown,
            metadata=reservation.metadata,
            event_id=hid("event", env, "resolve", ref),
        )
        if status == "EXPIRED":
            self.expired_reservations += 1
        return returned, consumed

    # --- flush ---------------------------------------------------------------------------

    def _lock_listing_order(self) -> None:
        """PostgreSQL: take the environments' listing locks, held until the commit.

        The listings page by ``seq`` (BIGSERIAL), taken when a row is inserted but visible
        only at commit: two writers on different wallets could commit seq N+1 before N, and a
        client paging from N+1 would never see N. Inserting and committing one writer at a
        time per environment makes seq order commit order, as SQLite's single writer does.
        Sorted, so writers taking several never deadlock on them."""
        environments = {event["environment"] for event in self._events}
        environments.update(grant.environment for grant in self._new_grants.values())
        for environment in sorted(environments):
            self.conn.execute(LISTING_ORDER_LOCK, {"key": listing_lock_key(environment)})

    def flush(self) -> None:
        """Write everything, in an order that satisfies the foreign keys."""
        conn = self.conn
        if conn.dialect.name == "postgresql":
            self._lock_listing_order()
        if self._new_accounts:
            BULK_ACCOUNTS.run(conn, self._new_accounts)
        if self._new_grants:
            BULK_GRANTS.run(conn, [g.row() for g in self._new_grants.values()])
        if self._transfers:
            BULK_TRANSFERS.run(conn, self._transfers)
        if self._deltas:
            BULK_DELTAS.run(
                conn,
                [
                    {"k_id": account, "v_debits": d[0], "v_credits": d[1]}
                    for account, d in self._deltas.items()
                ],
            )
        if self._new_consumptions:
            BULK_CONSUMPTIONS.run(conn, self._new_consumptions)
        if self._new_reservations:
            BULK_RESERVATIONS.run(conn, [r.row() for r in self._new_reservations.values()])
        if self._dirty_grants:
            BULK_GRANT_UPDATES.run(
                conn,
                [
                    {
                        "k_env": g.environment,
                        "k_gid": g.grant_id,
                        **{f"v_{name}": getattr(g, name) for name in _GRANT_MUTABLE},
                    }
                    for g in self._dirty_grants.values()
                ],
            )
        if self._dirty_reservations:
            BULK_RESERVATION_UPDATES.run(
                conn,
                [
                    {
                        "k_env": r.environment,
                        "k_rid": r.reservation_id,
                        **{f"v_{name}": getattr(r, name) for name in _RESERVATION_MUTABLE},
                    }
                    for r in self._dirty_reservations.values()
                ],
            )
        if self._events:
            BULK_EVENTS.run(conn, self._events)
