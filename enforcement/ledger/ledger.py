"""The :class:`Ledger` facade: validates input, prepares operations, and runs writes through
the group committer and reads through short snapshot transactions."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from byoc_platform.catalog import Grant
from enforcement.ledger import audit, reads, schema
from enforcement.ledger.amounts import parse_time, to_units, to_us
from enforcement.ledger.commit import Committer
from enforcement.ledger.engine import install_sqlite_hooks, make_engine
from enforcement.ledger.errors import InvalidInput, NotFound
from enforcement.ledger.ids import wallet_account_id, wallet_id
from enforcement.ledger.models import (
    Balance,
    Consumption,
    GrantView,
    LedgerEvent,
    Page,
    Release,
    Reservation,
)
from enforcement.ledger.ops import (
    ConsumeOp,
    ExpireOp,
    GrantInput,
    GrantOp,
    ReleaseOp,
    ReserveOp,
    VoidOp,
    reservation_view,
)
from enforcement.ledger.unit import RESERVATIONS_BY_ID, reservation_from_row

log = logging.getLogger(__name__)

MAX_ID = 255
MAX_TTL_S = 86_400
DEFAULT_TTL_S = 3_600
_GRANT_TYPES = ("PAID", "PROMOTIONAL")
_GRANT_STATUSES = ("ACTIVE", "SCHEDULED", "PAYMENT_PENDING", "VOIDED", "EXPIRED")


def _ident(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise InvalidInput(f"{field} must be a non-empty string of at most {MAX_ID} characters")
    return _no_nul(value, field)


def _no_nul(value: str, field: str) -> str:
    # PostgreSQL text cannot hold NUL: refused up front, on SQLite too, not as a DataError.
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain a NUL character")
    return value


def _optional_ident(value: object, field: str) -> str:
    """'' stands for "none" in keys (customer-level wallet)."""
    return "" if value is None else _ident(value, field)


def _json_map(value: Mapping[str, Any] | None, field: str, *, strings: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidInput(f"{field} must be an object with string keys")
    for key, item in value.items():
        ok = isinstance(item, str) if strings else isinstance(item, str | int | float | bool)
        if not ok or (isinstance(item, float) and not math.isfinite(item)):
            kind = "a string" if strings else "a string, finite number or boolean"
            raise InvalidInput(f"{field}.{key} must be {kind}")
    return msgspec.json.encode(dict(value)).decode()


class Ledger:
    """The double-entry credit ledger (see the package docstring for the model and API)."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] | None = None,
        max_batch: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        install_sqlite_hooks(engine)
        self.engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))
        self._committer = Committer(engine, max_batch=max_batch, on_batch=on_batch)
        self._known_wallets: set[str] = set()  # wallets are never deleted: safe to remember

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        sqlite_autocheckpoint: bool = True,
        **kwargs: Any,
    ) -> Ledger:
        """``sqlite:///path/ledger.db`` or ``postgresql+psycopg://user@host:port/db``.
        ``sqlite_synchronous="NORMAL"`` trades power-loss durability for speed;
        ``sqlite_autocheckpoint=False`` leaves WAL checkpoints to the caller (engine.py)."""
        engine = make_engine(
            url, sqlite_synchronous=sqlite_synchronous, sqlite_autocheckpoint=sqlite_autocheckpoint
        )
        return cls(engine, **kwargs)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> Ledger:
        """From ``byoc_platform.settings.Settings`` (``settings.ledger.database_url``)."""
        return cls.from_url(settings.ledger.database_url, **kwargs)

    def create_schema(self) -> None:
        with self.engine.begin() as conn:
            schema.create_schema(conn)

    def close(self) -> None:
        self._committer.close()
        self.engine.dispose()

    # --- time ------------------------------------------------------------------------------

    def _now_us(self, now: datetime | None) -> int:
        return to_us(self._clock() if now is None else now, "now")

    # --- grants ----------------------------------------------------------------------------

    def grant(
        self,
        environment: str,
        grant: Grant | None = None,
        /,
        *,
        now: datetime | None = None,
        **fields: Any,
    ) -> GrantView:
        """Apply a grant (idempotent by grant id; re-applying changes nothing).

        ``grant`` is a :class:`byoc_platform.catalog.Grant`, or pass keyword fields: ``id,
        customer_id, currency_id, amount, resource_id=None, display_name='', grant_type='PAID',
        priority=50, effective_at=now, expire_at=None, created_at=now, status='ACTIVE'``.
        A re-applied grant may change display name, priority and expiry (CREDITS_UPDATED) and
        its status (PAYMENT_PENDING -> ACTIVE issues it; VOIDED voids; EXPIRED expires); a
        different customer, currency, resource, amount, type, effectiveAt or createdAt is an
        IdempotencyConflict (grants cannot be edited).
        """
        now_us = self._now_us(now)
        data = self._grant_input(environment, grant, fields, now_us)
        wid = wallet_id(data.environment, data.customer_id, data.currency_id, data.resource_id)
        self._ensure_wallet(wid, data)
        return self._committer.run(GrantOp(grant=data, wallet_id=wid, now_us=now_us))

    def _grant_input(
        self, environment: str, grant: Grant | None, fields: dict[str, Any], now_us: int
    ) -> GrantInput:
        env = _ident(environment, "environment")
        if grant is not None:
            if fields:
                raise InvalidInput("pass a Grant or keyword fields, not both")
            if not isinstance(grant, Grant):
                raise InvalidInput(
                    f"grant must be a byoc_platform.catalog.Grant, got {type(grant).__name__}"
                )
            fields = {
                "id": grant.id,
                "customer_id": grant.customerId,
                "currency_id": grant.currencyId,
                "amount": grant.amount,
                "resource_id": grant.resourceId,
                "display_name": grant.displayName,
                "grant_type": grant.grantType,
                "priority": grant.priority,
                "effective_at": grant.effectiveAt,
                "expire_at": grant.expireAt,
                "created_at": grant.createdAt,
                "status": grant.status,
            }
        allowed = {
            "id",
            "customer_id",
            "currency_id",
            "amount",
            "resource_id",
            "display_name",
            "grant_type",
            "priority",
            "effective_at",
            "expire_at",
            "created_at",
            "status",
        }
        extra = sorted(set(fields) - allowed)
        if extra:
            raise InvalidInput(f"unknown grant field(s) {', '.join(extra)}")
        for required in ("id", "customer_id", "currency_id", "amount"):
            if required not in fields:
                raise InvalidInput(f"grant field {required} is required")
        grant_type = fields.get("grant_type", "PAID")
        if grant_type not in _GRANT_TYPES:
            raise InvalidInput(f"grantType must be PAID or PROMOTIONAL, got {grant_type!r}")
        priority = fields.get("priority", 50)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise InvalidInput(f"priority must be an integer from 0 to 100, got {priority!r}")
        status = fields.get("status", "ACTIVE")
        if status not in _GRANT_STATUSES:
            raise InvalidInput(
                f"status must be one of {', '.join(_GRANT_STATUSES)}, got {status!r}"
            )
        effective = parse_time(fields.get("effective_at"), "effectiveAt")
        expire = parse_time(fields.get("expire_at"), "expireAt")
        created = parse_time(fields.get("created_at"), "createdAt")
        effective = now_us if effective is None else effective
        if expire is not None and expire <= effective:
            raise InvalidInput("expireAt must be after effectiveAt")
        display_name = fields.get("display_name") or ""
        if not isinstance(display_name, str):
            raise InvalidInput("displayName must be a string")
        _no_nul(display_name, "displayName")
        return GrantInput(
            environment=env,
            grant_id=_ident(fields["id"], "grant id"),
            customer_id=_ident(fields["customer_id"], "customerId"),
            currency_id=_ident(fields["currency_id"], "currencyId"),
            resource_id=_optional_ident(fields.get("resource_id"), "resourceId"),
            amount=to_units(fields["amount"]),
            grant_type=grant_type,
            priority=priority,
            effective_us=effective,
            expire_us=expire,
            created_us=now_us if created is None else created,
            display_name=display_name,
            status=status,
        )

    def _ensure_wallet(self, wid: str, data: GrantInput) -> None:
        """Create the wallet and its system accounts in their own short transaction, so the
        grant's transaction only ever locks existing rows (in id order: no deadlocks)."""
        if wid in self._known_wallets:
            return
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.connect() as conn:
            exists = conn.execute(
                select(schema.wallets.c.id).where(schema.wallets.c.id == wid)
            ).first()
            conn.rollback()
            if exists is None:
                with conn.execution_options(ledger_begin="IMMEDIATE").begin():
                    conn.execute(
                        dialect.insert(schema.wallets)
                        .values(
                            id=wid,
                            environment=data.environment,
                            customer_id=data.customer_id,
                            currency_id=data.currency_id,
                            resource_id=data.resource_id,
                            created_us=data.created_us,
                        )
                        .on_conflict_do_nothing()
                    )
                    conn.execute(
                        dialect.insert(schema.accounts).on_conflict_do_nothing(),
                        [
                            {
                                "id": wallet_account_id(wid, kind),
                                "wallet_id": wid,
                                "kind": kind,
                                "grant_id": None,
                                "debits_posted": 0,
                                "credits_posted": 0,
                            }
                            for kind in schema.WALLET_ACCOUNT_KINDS
                        ],
                    )
        self._known_wallets.add(wid)

    def void_grant(self, environment: str, grant_id: str, now: datetime | None = None) -> GrantView:
        """Void a grant: its remaining credits go to the voided sink (CREDITS_VOIDED).
        Voiding twice, or voiding an expired grant, changes nothing."""
        env = _ident(environment, "environment")
        gid = _ident(grant_id, "grant id")
        now_us = self._now_us(now)
        with self._read() as conn:
            wid = conn.execute(
                select(schema.grants.c.wallet_id).where(
                    schema.grants.c.environment == env, schema.grants.c.grant_id == gid
                )
            ).scalar()
        if wid is None:
            raise NotFound(f"grant {gid!r} not found")
        return self._committer.run(
            VoidOp(environment=env, grant_id=gid, wallet_id=wid, now_us=now_us)
        )

    def get_grant(self, environment: str, grant_id: str, now: datetime | None = None) -> GrantView:
        now_us = self._now_us(now)
        with self._read() as conn:
            view = reads.get_grant(conn, _ident(environment, "environment"), grant_id, now_us)
        if view is None:
            raise NotFound(f"grant {grant_id!r} not found")
        return view

    def list_grants(
        self,
        environment: str,
        customer_id: str,
        currency_id: str | None = None,
        resource_id: str | None = None,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
        now: datetime | None = None,
    ) -> Page[GrantView]:
        """Newest first. Without ``resource_id`` only customer-level grants (as Stigg)."""
        now_us = self._now_us(now)
        with self._read() as conn:
            return reads.list_grants(
                conn,
                _ident(environment, "environment"),
                _ident(customer_id, "customerId"),
                currency_id,
                _optional_ident(resource_id, "resourceId"),
                after,
                before,
                limit,
                now_us,
            )

    # --- consumption -----------------------------------------------------------------------

    def consume(
        self,
        environment: str,
        customer_id: str,
        currency_id: str,
        amount: int | float | str | Any,
        idempotency_key: str,
        resource_id: str | None = None,
        *,
        now: datetime | None = None,
        created_at: datetime | str | None = None,
        dimensions: Mapping[str, str | int | float | bool] | None = None,
        feature_id: str | None = None,
    ) -> Consumption:
        """Consume ``amount`` from the wallet, drawing grants in Stigg's order, all or nothing.

        Raises InsufficientCredits (nothing written) if the wallet cannot cover it. The same
        ``idempotency_key`` (per customer) again returns the first consumption with
        ``duplicate=True``; with a different amount, currency or resource it is an
        IdempotencyConflict.
        """
        op = self.consume_op(
            environment,
            customer_id,
            currency_id,
            amount,
            idempotency_key,
            resource_id,
            now=now,
            created_at=created_at,
            dimensions=dimensions,
            feature_id=feature_id,
        )
        return self._committer.run(op)

    def submit(self, op: Any, callback: Callable[[Any, BaseException | None], None]) -> None:
        """Queue an operation (e.g. from :meth:`consume_op`) without blocking: ``callback``
        gets ``(result, None)`` or ``(None, error)`` on the committing thread once its
        transaction committed. For event loops; see commit.py."""
        self._committer.submit(op, callback)

    def consume_op(
        self,
        environment: str,
        customer_id: str,
        currency_id: str,
        amount: int | float | str | Any,
        idempotency_key: str,
        resource_id: str | None = None,
        *,
        now: datetime | None = None,
        created_at: datetime | str | None = None,
        dimensions: Mapping[str, str | int | float | bool] | None = None,
        feature_id: str | None = None,
    ) -> ConsumeOp:
        """The operation :meth:`consume` runs, validated (InvalidInput/InvalidAmount here)."""
        env = _ident(environment, "environment")
        customer = _ident(customer_id, "customerId")
        currency = _ident(currency_id, "currencyId")
        resource = _optional_ident(resource_id, "resourceId")
        now_us = self._now_us(now)
        stamp = parse_time(created_at, "createdAt")
        op = ConsumeOp(
            environment=env,
            customer_id=customer,
            currency_id=currency,
            resource_id=resource,
            units=to_units(amount),
            idempotency_key=_ident(idempotency_key, "idempotencyKey"),
            wallet_id=wallet_id(env, customer, currency, resource),
            now_us=now_us,
            timestamp_us=now_us if stamp is None else stamp,
            feature_id=None if feature_id is None else _ident(feature_id, "featureId"),
            dimensions=_json_map(dimensions, "dimensions", strings=False),
        )
        return op

    # --- reservations ----------------------------------------------------------------------

    def reserve(
        self,
        environment: str,
        customer_id: str,
        currency_id: str,
        amount: int | float | str | Any,
        reservation_id: str,
        ttl_s: int | None = None,
        resource_id: str | None = None,
        *,
        expires_at: datetime | str | None = None,
        now: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
        feature_id: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` (drawn in Stigg's order) until released or until the TTL passes.

        ``ttl_s`` 1..86400 (default 3600) or ``expires_at`` (at most 24 h ahead), not both.
        Refused atomically with InsufficientCredits. The same reservation id with the same
        customer/currency/resource/amount returns the existing reservation (``duplicate``);
        otherwise IdempotencyConflict.
        """
        env = _ident(environment, "environment")
        customer = _ident(customer_id, "customerId")
        currency = _ident(currency_id, "currencyId")
        resource = _optional_ident(resource_id, "resourceId")
        now_us = self._now_us(now)
        if ttl_s is not None and expires_at is not None:
            raise InvalidInput("pass reservationTtlSeconds or reservationExpiresAt, not both")
        if expires_at is not None:
            expires_us = parse_time(expires_at, "reservationExpiresAt")
            assert expires_us is not None
            if not now_us < expires_us <= now_us + MAX_TTL_S * 1_000_000:
                raise InvalidInput(
                    "reservationExpiresAt must be in the future, at most 24 hours ahead"
                )
        else:
            ttl = DEFAULT_TTL_S if ttl_s is None else ttl_s
            if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
                raise InvalidInput(
                    f"reservationTtlSeconds must be an integer from 1 to {MAX_TTL_S}, got {ttl_s!r}"
                )
            expires_us = now_us + ttl * 1_000_000
        op = ReserveOp(
            environment=env,
            customer_id=customer,
            currency_id=currency,
            resource_id=resource,
            units=to_units(amount),
            reservation_id=_ident(reservation_id, "reservationId"),
            wallet_id=wallet_id(env, customer, currency, resource),
            now_us=now_us,
            expires_us=expires_us,
            feature_id=None if feature_id is None else _ident(feature_id, "featureId"),
            metadata=_json_map(metadata, "reservationMetadata", strings=True),
        )
        return self._committer.run(op)

    def release(
        self,
        environment: str,
        reservation_id: str,
        consumed_amount: int | float | str | Any,
        *,
        customer_id: str | None = None,
        currency_id: str | None = None,
        resource_id: str | None = None,
        now: datetime | None = None,
    ) -> Release:
        """Resolve a reservation once: ``consumed_amount`` (may be 0) is charged to the held
        credits, the rest goes back to the same grants (or to the expired / voided sink if the
        grant died meanwhile); an amount above the hold is consumed normally, all or nothing.

        NotFound if unknown (or not for the given customer/currency/resource);
        ReservationAlreadyResolved if it was released or expired (TTL passed) before.
        """
        env = _ident(environment, "environment")
        rid = _ident(reservation_id, "reservationId")
        units = to_units(consumed_amount, "consumedAmount", allow_zero=True)
        now_us = self._now_us(now)
        with self._read() as conn:
            wid = conn.execute(
                select(schema.reservations.c.wallet_id).where(
                    schema.reservations.c.environment == env,
                    schema.reservations.c.reservation_id == rid,
                )
            ).scalar()
        if wid is None:
            raise NotFound(f"reservation {rid!r} not found")
        op = ReleaseOp(
            environment=env,
            reservation_id=rid,
            units=units,
            wallet_id=wid,
            customer_id=None if customer_id is None else _ident(customer_id, "customerId"),
            currency_id=None if currency_id is None else _ident(currency_id, "currencyId"),
            resource_id=None if resource_id is None else resource_id,
            now_us=now_us,
        )
        return self._committer.run(op)

    def get_reservation(self, environment: str, reservation_id: str) -> Reservation:
        with self._read() as conn:
            rows = RESERVATIONS_BY_ID.rows(conn, {"e": environment, "ids": [reservation_id]})
        if not rows:
            raise NotFound(f"reservation {reservation_id!r} not found")
        return reservation_view(reservation_from_row(rows[0]))

    # --- expiry ----------------------------------------------------------------------------

    def expire_due(self, now: datetime | None = None, *, chunk: int = 200) -> int:
        """Expire every grant whose expireAt passed (CREDITS_EXPIRED) and release every
        reservation whose TTL passed with nothing consumed (CREDITS_RESERVATION_EXPIRED).
        Returns how many grants and reservations it expired. Consumption never draws from an
        expired grant even before this runs; this makes the books (and the listing) show it."""
        now_us = self._now_us(now)
        g, r = schema.grants, schema.reservations
        total = 0
        for _ in range(10_000):  # bounded: each round makes progress or stops
            with self._read() as conn:
                due = {
                    w
                    for (w,) in conn.execute(
                        select(g.c.wallet_id)
                        .where(
                            g.c.expired_us.is_(None),
                            g.c.voided_us.is_(None),
                            g.c.expire_us <= now_us,
                        )
                        .distinct()
                        .limit(chunk)
                    )
                }
                due |= {
                    w
                    for (w,) in conn.execute(
                        select(r.c.wallet_id)
                        .where(r.c.status == "ACTIVE", r.c.expires_us <= now_us)
                        .distinct()
                        .limit(chunk)
                    )
                }
            if not due:
                break
            total += self._committer.run(ExpireOp(wallets=tuple(sorted(due)), now_us=now_us))
        return total

    # --- reads -----------------------------------------------------------------------------

    def _read(self) -> Any:
        return _ReadTx(self.engine)

    def balance(
        self,
        environment: str,
        customer_id: str,
        currency_id: str,
        resource_id: str | None = None,
        *,
        now: datetime | None = None,
    ) -> Balance:
        now_us = self._now_us(now)
        with self._read() as conn:
            return reads.balance(
                conn,
                _ident(environment, "environment"),
                _ident(customer_id, "customerId"),
                _ident(currency_id, "currencyId"),
                _optional_ident(resource_id, "resourceId"),
                now_us,
            )

    def ledger_events(
        self,
        environment: str,
        customer_id: str | None = None,
        currency_id: str | None = None,
        *,
        resource_id: str | None = None,
        reservation_id: str | None = None,
        event_types: Sequence[str] | None = None,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
    ) -> Page[LedgerEvent]:
        """The ledger listing, newest first; ``after=page.next`` for older events."""
        with self._read() as conn:
            return reads.ledger_events(
                conn,
                _ident(environment, "environment"),
                customer_id,
                currency_id,
                resource_id,
                reservation_id,
                event_types,
                after,
                before,
                limit,
            )

    def check_invariants(self) -> None:
        """Raise InvariantViolation unless the books balance (see audit.py for the list)."""
        with self._read() as conn:
            audit.check_invariants(conn)


class _ReadTx:
    """A read-only snapshot transaction (rolled back at the end: reads never write)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        conn = self._engine.connect()
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        self._conn = conn
        conn.begin()
        return conn

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None
        self._conn.rollback()
        self._conn.close()
