"""The write operations. Each is prepared by the caller (validated, its wallets known), then
applied by the committer inside a write transaction on a :class:`~enforcement.ledger.unit.Unit`.

``apply`` decides before it changes anything (see unit.py), so a refusal leaves no trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import and_, bindparam, select

from enforcement.ledger import schema
from enforcement.ledger.amounts import WALLET_CAP_UNITS, from_us, iso, to_decimal
from enforcement.ledger.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    NotFound,
    ReservationAlreadyResolved,
)
from enforcement.ledger.ids import grant_account_id
from enforcement.ledger.models import Consumption, Entry, GrantView, Release, Reservation
from enforcement.ledger.state import (
    ConsumptionRecord,
    GrantState,
    ReservationState,
    WalletState,
    allocate,
)
from enforcement.ledger.unit import Unit

_json = msgspec.json.encode
_unjson = msgspec.json.decode


def _res(resource_id: str) -> str | None:
    return resource_id or None


def _wallet_name(customer_id: str, currency_id: str, resource_id: str) -> str:
    where = f" resource {resource_id!r}" if resource_id else ""
    return f"customer {customer_id!r}{where} currency {currency_id!r}"


def grant_view(grant: GrantState, now_us: int) -> GrantView:
    return GrantView(
        environment=grant.environment,
        id=grant.grant_id,
        customer_id=grant.customer_id,
        currency_id=grant.currency_id,
        resource_id=_res(grant.resource_id),
        amount=to_decimal(grant.amount),
        consumed_amount=to_decimal(grant.consumed),
        remaining=to_decimal(grant.balance),
        held=to_decimal(grant.held),
        display_name=grant.display_name,
        grant_type=grant.grant_type,
        priority=grant.priority,
        effective_at=from_us(grant.effective_us),
        expire_at=None if grant.expire_us is None else from_us(grant.expire_us),
        created_at=from_us(grant.created_us),
        updated_at=from_us(grant.updated_us),
        voided_at=None if grant.voided_us is None else from_us(grant.voided_us),
        status=grant.status(now_us),  # type: ignore[arg-type]
    )


def reservation_view(
    r: ReservationState, *, duplicate: bool = False, available_after: int | None = None
) -> Reservation:
    return Reservation(
        environment=r.environment,
        id=r.reservation_id,
        customer_id=r.customer_id,
        currency_id=r.currency_id,
        resource_id=_res(r.resource_id),
        amount=to_decimal(r.amount),
        entries=[Entry(grant_id=g, amount=to_decimal(u)) for g, u in r.parts],
        status=r.status,  # type: ignore[arg-type]
        consumed_amount=None if r.consumed is None else to_decimal(r.consumed),
        created_at=from_us(r.created_us),
        expires_at=from_us(r.expires_us),
        resolved_at=None if r.resolved_us is None else from_us(r.resolved_us),
        metadata=None if r.metadata is None else _unjson(r.metadata),
        duplicate=duplicate,
        available_after=None if available_after is None else to_decimal(available_after),
    )


def plan_draw(
    wallet: WalletState | None,
    units: int,
    now_us: int,
    what: str,
    customer_id: str,
    currency_id: str,
    resource_id: str,
) -> list[tuple[GrantState, int]]:
    """The grants to draw ``units`` from, in Stigg's order, or InsufficientCredits."""
    ordered = [] if wallet is None else wallet.draw_order(now_us)
    plan = allocate(ordered, units)
    if plan is None:
        available = sum(g.balance for g in ordered)
        raise InsufficientCredits(
            f"{what} of {to_decimal(units)} refused: "
            f"{_wallet_name(customer_id, currency_id, resource_id)} "
            f"has only {to_decimal(available)} available",
            available=to_decimal(available),
            requested=to_decimal(units),
        )
    return plan


# --- grants ------------------------------------------------------------------------------


@dataclass(slots=True)
class GrantInput:
    """A validated grant (from catalog.Grant or keyword arguments)."""

    environment: str
    grant_id: str
    customer_id: str
    currency_id: str
    resource_id: str
    amount: int
    grant_type: str
    priority: int
    effective_us: int
    expire_us: int | None
    created_us: int
    display_name: str
    status: str  # the control plane's view: ACTIVE/SCHEDULED, PAYMENT_PENDING, VOIDED, EXPIRED


@dataclass(slots=True)
class GrantOp:
    grant: GrantInput
    wallet_id: str
    now_us: int
    exclusive = False

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return (self.wallet_id,)

    def prefetch_key(self) -> None:
        return None

    def apply(self, unit: Unit) -> GrantView:
        g, now = self.grant, self.now_us
        wallet = unit.wallet(self.wallet_id, now)
        assert wallet is not None, "grant's wallet must be created before the grant is applied"
        existing = unit.find_grant(g.environment, g.grant_id)
        if existing is None:
            return self._create(unit, wallet)
        unit.sweep_grants(wallet, now)  # a grant past its expiry is expired before anything else
        return self._reapply(unit, wallet, existing)

    def _check_cap(self, wallet: WalletState) -> None:
        if wallet.issued_total + self.grant.amount > WALLET_CAP_UNITS:
            raise InvalidAmount(
                f"grant {self.grant.grant_id!r} would take the total granted to "
                f"{_wallet_name(wallet.customer_id, wallet.currency_id, wallet.resource_id)} "
                f"above {to_decimal(WALLET_CAP_UNITS)}"
            )

    def _create(self, unit: Unit, wallet: WalletState) -> GrantView:
        g, now = self.grant, self.now_us
        issue = g.status in ("ACTIVE", "SCHEDULED")
        if issue:
            self._check_cap(wallet)
        state = GrantState(
            environment=g.environment,
            grant_id=g.grant_id,
            wallet_id=wallet.id,
            customer_id=g.customer_id,
            currency_id=g.currency_id,
            resource_id=g.resource_id,
            account_id=grant_account_id(g.environment, g.grant_id, schema.GRANT),
            hold_account_id=grant_account_id(g.environment, g.grant_id, schema.HOLD),
            amount=g.amount,
            grant_type=g.grant_type,
            priority=g.priority,
            effective_us=g.effective_us,
            expire_us=g.expire_us,
            created_us=g.created_us,
            display_name=g.display_name,
            payment_pending=g.status == "PAYMENT_PENDING",
            issued=False,
            consumed=0,
            # Seen first as already voided or expired: recorded, but no credits ever move.
            voided_us=now if g.status == "VOIDED" else None,
            expired_us=now if g.status == "EXPIRED" else None,
            updated_us=now,
            balance=0,
            held=0,
        )
        unit.add_grant(wallet, state)
        if issue:
            _issue(unit, wallet, state, now)
            unit.sweep_grants(wallet, now)  # a grant may arrive already past its expiry
        return grant_view(state, now)

    def _reapply(self, unit: Unit, wallet: WalletState, existing: GrantState) -> GrantView:
        g, now = self.grant, self.now_us
        # Grants cannot be edited (Stigg): the money-defining fields must match exactly.
        fixed = {
            "customerId": (existing.customer_id, g.customer_id),
            "currencyId": (existing.currency_id, g.currency_id),
            "resourceId": (existing.resource_id, g.resource_id),
            "amount": (existing.amount, g.amount),
            "grantType": (existing.grant_type, g.grant_type),
            "effectiveAt": (existing.effective_us, g.effective_us),
            "createdAt": (existing.created_us, g.created_us),
        }
        differing = [name for name, (old, new) in fixed.items() if old != new]
        if differing:
            raise IdempotencyConflict(
                f"grant {g.grant_id!r} already exists with different {', '.join(differing)}; "
                "grants cannot be edited: void it and create a new one"
            )
        activate = existing.payment_pending and g.status in ("ACTIVE", "SCHEDULED")
        if activate and not existing.finished():
            self._check_cap(wallet)
        changed = False
        if existing.display_name != g.display_name:
            existing.display_name = g.display_name
            changed = True
        reordered = existing.priority != g.priority or existing.expire_us != g.expire_us
        if reordered:
            existing.priority = g.priority
            existing.expire_us = g.expire_us
            wallet.changed()
            changed = True
            unit.event(wallet, "CREDITS_UPDATED", g.grant_id, 0, g.grant_id, now, now)
        if activate and not existing.finished():
            existing.payment_pending = False
            _issue(unit, wallet, existing, now)
        elif g.status == "VOIDED":
            _void(unit, wallet, existing, now)
        elif g.status == "EXPIRED":
            unit.expire_grant(wallet, existing, now)
        if changed:
            unit.touch_grant(existing, now)
        unit.sweep_grants(wallet, now)
        return grant_view(existing, now)


def _issue(unit: Unit, wallet: WalletState, grant: GrantState, now_us: int) -> None:
    ref = grant.grant_id
    unit.post(
        wallet,
        wallet.sink(schema.ISSUANCE),
        grant.account_id,
        grant.amount,
        "grant",
        ref,
        0,
        ref,
        now_us,
    )
    grant.balance += grant.amount
    grant.issued = True
    wallet.issued_total += grant.amount
    unit.event(wallet, "CREDITS_GRANTED", ref, grant.amount, ref, 0, now_us)
    unit.touch_grant(grant, now_us)


def _void(unit: Unit, wallet: WalletState, grant: GrantState, now_us: int) -> None:
    """Move the grant's remaining credits to the voided sink; voiding twice is harmless."""
    if grant.finished():
        return
    ref = grant.grant_id
    if grant.balance > 0:
        units = grant.balance
        unit.post(
            wallet, grant.account_id, wallet.sink(schema.VOIDED), units, "void", ref, 0, ref, now_us
        )
        grant.balance = 0
        unit.event(wallet, "CREDITS_VOIDED", ref, -units, ref, 0, now_us)
    grant.voided_us = now_us
    unit.touch_grant(grant, now_us)
    wallet.changed()


@dataclass(slots=True)
class VoidOp:
    environment: str
    grant_id: str
    wallet_id: str
    now_us: int
    exclusive = False

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return (self.wallet_id,)

    def prefetch_key(self) -> None:
        return None

    def apply(self, unit: Unit) -> GrantView:
        wallet = unit.wallet(self.wallet_id, self.now_us)
        grant = unit.find_grant(self.environment, self.grant_id)
        if wallet is None or grant is None:
            raise NotFound(f"grant {self.grant_id!r} not found")
        unit.sweep_grants(wallet, self.now_us)  # expiry that already happened wins over void
        _void(unit, wallet, grant, self.now_us)
        return grant_view(grant, self.now_us)


# --- consumption -------------------------------------------------------------------------


@dataclass(slots=True)
class ConsumeOp:
    environment: str
    customer_id: str
    currency_id: str
    resource_id: str
    units: int
    idempotency_key: str
    wallet_id: str
    now_us: int
    timestamp_us: int
    feature_id: str | None
    dimensions: str | None
    exclusive = False
    # Changes its wallet only through Unit.wallet()'s state (commit.WalletCarry).
    carries_wallets = True

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return (self.wallet_id,)

    def prefetch_key(self) -> tuple[str, str, str, str]:
        return ("consumption", self.environment, self.customer_id, self.idempotency_key)

    def _view(
        self, record: ConsumptionRecord, duplicate: bool, available: int | None
    ) -> Consumption:
        return Consumption(
            environment=record.environment,
            customer_id=record.customer_id,
            currency_id=record.currency_id,
            resource_id=_res(record.resource_id),
            idempotency_key=record.idempotency_key,
            amount=to_decimal(record.amount),
            timestamp=from_us(record.timestamp_us),
            entries=[Entry(grant_id=g, amount=to_decimal(u)) for g, u in record.entries],
            duplicate=duplicate,
            available_after=None if available is None else to_decimal(available),
        )

    def apply(self, unit: Unit) -> Consumption:
        env, customer, key, now = (
            self.environment,
            self.customer_id,
            self.idempotency_key,
            self.now_us,
        )
        seen = unit.find_consumption(env, customer, key)
        if seen is not None:
            if (seen.currency_id, seen.resource_id, seen.amount) != (
                self.currency_id,
                self.resource_id,
                self.units,
            ):
                raise IdempotencyConflict(
                    f"idempotencyKey {key!r} of customer {customer!r} was already used to consume "
                    f"{to_decimal(seen.amount)} of "
                    f"{_wallet_name(customer, seen.currency_id, seen.resource_id)}; "
                    f"this request asks {to_decimal(self.units)} of "
                    f"{_wallet_name(customer, self.currency_id, self.resource_id)}"
                )
            return self._view(seen, True, None)
        wallet = unit.wallet(self.wallet_id, now)
        plan = plan_draw(
            wallet, self.units, now, "consumption", customer, self.currency_id, self.resource_id
        )
        assert wallet is not None
        consumed = wallet.sink(schema.CONSUMED)
        entries: list[tuple[str, int]] = []
        for index, (grant, take) in enumerate(plan):
            gid = grant.grant_id
            unit.post(
                wallet, grant.account_id, consumed, take, "consume", key, index, gid, now, customer
            )
            grant.balance -= take
            grant.consumed += take
            unit.touch_grant(grant, now)
            unit.event(
                wallet,
                "CREDITS_CONSUMED",
                gid,
                -take,
                key,
                index,
                self.timestamp_us,
                feature_id=self.feature_id,
                scope=customer,
            )
            entries.append((gid, take))
        record = ConsumptionRecord(
            environment=env,
            customer_id=customer,
            idempotency_key=key,
            wallet_id=wallet.id,
            currency_id=self.currency_id,
            resource_id=self.resource_id,
            amount=self.units,
            entries=entries,
            timestamp_us=self.timestamp_us,
        )
        unit.add_consumption(
            record,
            {
                "environment": env,
                "customer_id": customer,
                "idempotency_key": key,
                "wallet_id": wallet.id,
                "currency_id": self.currency_id,
                "resource_id": self.resource_id,
                "amount": self.units,
                "entries": _json(entries).decode(),
                "feature_id": self.feature_id,
                "dimensions": self.dimensions,
                "timestamp_us": self.timestamp_us,
                "recorded_us": now,
            },
        )
        return self._view(record, False, wallet.available(now))


# --- reservations ------------------------------------------------------------------------


@dataclass(slots=True)
class ReserveOp:
    environment: str
    customer_id: str
    currency_id: str
    resource_id: str
    units: int
    reservation_id: str
    wallet_id: str
    now_us: int
    expires_us: int
    feature_id: str | None
    metadata: str | None
    exclusive = False

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return (self.wallet_id,)

    def prefetch_key(self) -> tuple[str, str, str]:
        return ("reservation", self.environment, self.reservation_id)

    def apply(self, unit: Unit) -> Reservation:
        env, rid, now = self.environment, self.reservation_id, self.now_us
        seen = unit.find_reservation(env, rid)
        if seen is not None:
            if (seen.customer_id, seen.currency_id, seen.resource_id, seen.amount) != (
                self.customer_id,
                self.currency_id,
                self.resource_id,
                self.units,
            ):
                raise IdempotencyConflict(
                    f"reservationId {rid!r} already holds {to_decimal(seen.amount)} of "
                    f"{_wallet_name(seen.customer_id, seen.currency_id, seen.resource_id)}; this "
                    f"request asks {to_decimal(self.units)} of "
                    f"{_wallet_name(self.customer_id, self.currency_id, self.resource_id)}"
                )
            return reservation_view(seen, duplicate=True)
        wallet = unit.wallet(self.wallet_id, now)
        plan = plan_draw(
            wallet,
            self.units,
            now,
            "reservation",
            self.customer_id,
            self.currency_id,
            self.resource_id,
        )
        assert wallet is not None
        parts: list[tuple[str, int]] = []
        for index, (grant, take) in enumerate(plan):
            gid = grant.grant_id
            unit.post(
                wallet,
                grant.account_id,
                grant.hold_account_id,
                take,
                "reserve",
                rid,
                index,
                gid,
                now,
            )
            grant.balance -= take
            grant.held += take
            unit.touch_grant(grant, now)
            unit.event(
                wallet,
                "CREDITS_RESERVED",
                gid,
                -take,
                rid,
                index,
                now,
                reservation_id=rid,
                feature_id=self.feature_id,
                metadata=self.metadata,
            )
            parts.append((gid, take))
        reservation = ReservationState(
            environment=env,
            reservation_id=rid,
            wallet_id=wallet.id,
            customer_id=self.customer_id,
            currency_id=self.currency_id,
            resource_id=self.resource_id,
            amount=self.units,
            parts=parts,
            status="ACTIVE",
            consumed=None,
            feature_id=self.feature_id,
            metadata=self.metadata,
            created_us=now,
            expires_us=self.expires_us,
            resolved_us=None,
        )
        unit.add_reservation(reservation)
        return reservation_view(reservation, available_after=wallet.available(now))


@dataclass(slots=True)
class ReleaseOp:
    environment: str
    reservation_id: str
    units: int
    wallet_id: str
    customer_id: str | None
    currency_id: str | None
    resource_id: str | None
    now_us: int
    exclusive = False

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return (self.wallet_id,)

    def prefetch_key(self) -> tuple[str, str, str]:
        return ("reservation", self.environment, self.reservation_id)

    def apply(self, unit: Unit) -> Release:
        env, rid, now = self.environment, self.reservation_id, self.now_us
        res = unit.find_reservation(env, rid)
        mismatch = res is not None and any(
            given is not None and given != actual
            for given, actual in (
                (self.customer_id, res.customer_id),
                (self.currency_id, res.currency_id),
                (self.resource_id, res.resource_id),
            )
        )
        if res is None or mismatch:
            raise NotFound(
                f"reservation {rid!r} not found"
                + (" for this customer / currency / resource" if mismatch else "")
            )
        wallet = unit.wallet(res.wallet_id, now)  # sweeping may expire it right here
        assert wallet is not None
        if res.status == "ACTIVE" and res.expires_us <= now:
            unit.resolve(wallet, res, 0, [], now, "EXPIRED")
        if res.status != "ACTIVE":
            verb = "expired" if res.status == "EXPIRED" else "released"
            raise ReservationAlreadyResolved(
                f"reservation {rid!r} was already {verb} at {iso(res.resolved_us)}",
                status=res.status,
            )
        # Up to the hold is charged to the held credits; any excess is consumed normally,
        # and refused (with nothing changed) if the wallet cannot cover it.
        excess = max(0, self.units - res.amount)
        plan = (
            plan_draw(
                wallet,
                excess,
                now,
                "release (consumption above the reservation)",
                res.customer_id,
                res.currency_id,
                res.resource_id,
            )
            if excess
            else []
        )
        returned, consumed = unit.resolve(
            wallet, res, min(self.units, res.amount), plan, now, "RELEASED"
        )
        return Release(
            reservation=reservation_view(res),
            consumed_amount=to_decimal(self.units),
            returned_amount=to_decimal(returned),
            consumed_entries=[Entry(grant_id=g, amount=to_decimal(u)) for g, u in consumed],
            available_after=to_decimal(wallet.available(now)),
        )


# --- expiry ------------------------------------------------------------------------------

_g = schema.grants
_acc = schema.accounts
_settled = select(_acc.c.id).where(
    _acc.c.wallet_id == bindparam("w"), _acc.c.debits_posted == _acc.c.credits_posted
)
# Due grants with nothing in them: only their state changes (no money to move).
MARK_EMPTY_DUE_GRANTS = (
    _g.update()
    .where(
        and_(
            _g.c.wallet_id == bindparam("w"),
            _g.c.expired_us.is_(None),
            _g.c.voided_us.is_(None),
            _g.c.expire_us <= bindparam("now"),
            _g.c.account_id.in_(_settled),
            _g.c.hold_account_id.in_(_settled),
        )
    )
    .values(expired_us=bindparam("now"), updated_us=bindparam("now"))
)


@dataclass(slots=True)
class ExpireOp:
    """Sweep the given wallets: expire due grants and due reservations. Runs alone."""

    wallets: tuple[str, ...]
    now_us: int
    exclusive = True

    @property
    def wallet_ids(self) -> tuple[str, ...]:
        return self.wallets

    def prefetch_key(self) -> None:
        return None

    def apply(self, unit: Unit) -> int:
        marked = 0
        for wallet_id in self.wallets:
            # Before loading the wallet: the load only reads grants with credits in them.
            result: Any = unit.conn.execute(
                MARK_EMPTY_DUE_GRANTS, {"w": wallet_id, "now": self.now_us}
            )
            marked += result.rowcount
            unit.wallet(wallet_id, self.now_us)
        return marked + unit.expired_grants + unit.expired_reservations
