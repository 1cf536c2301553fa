"""In-transaction state of wallets, grants and reservations, and Stigg's draw order."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

_NEVER = 2**63 - 1  # a grant without expiry sorts after every expiring one


@dataclass(slots=True, eq=False)
class GrantState:
    environment: str
    grant_id: str
    wallet_id: str
    customer_id: str
    currency_id: str
    resource_id: str
    account_id: str
    hold_account_id: str
    amount: int
    grant_type: str
    priority: int
    effective_us: int
    expire_us: int | None
    created_us: int
    display_name: str
    payment_pending: bool
    issued: bool
    consumed: int
    voided_us: int | None
    expired_us: int | None
    updated_us: int
    balance: int  # the grant account: issued and not yet consumed, held, expired or voided
    held: int  # the hold account: held by open reservations

    def finished(self) -> bool:
        return self.voided_us is not None or self.expired_us is not None

    def due(self, now_us: int) -> bool:
        """Its expiry has passed but it was not swept yet."""
        return not self.finished() and self.expire_us is not None and self.expire_us <= now_us

    def live(self, now_us: int) -> bool:
        """Issued, paid, not voided, not expired (its credits may be drawn once effective)."""
        return (
            self.issued
            and not self.payment_pending
            and not self.finished()
            and (self.expire_us is None or self.expire_us > now_us)
        )

    def drawable(self, now_us: int) -> bool:
        # live() inlined: this runs for every grant of every operation.
        return (
            self.balance > 0
            and self.effective_us <= now_us
            and (self.expire_us is None or self.expire_us > now_us)
            and self.issued
            and not self.payment_pending
            and self.voided_us is None
            and self.expired_us is None
        )

    def draw_key(self) -> tuple[int, int, int, int, int, str]:
        """Stigg's order: priority (lower first), sooner expiry, promotional before paid,
        earlier effectiveAt, earlier createdAt; the grant id breaks any remaining tie."""
        return (
            self.priority,
            _NEVER if self.expire_us is None else self.expire_us,
            0 if self.grant_type == "PROMOTIONAL" else 1,
            self.effective_us,
            self.created_us,
            self.grant_id,
        )

    def status(self, now_us: int) -> str:
        if self.voided_us is not None:
            return "VOIDED"
        if self.expired_us is not None or (self.expire_us is not None and self.expire_us <= now_us):
            return "EXPIRED"
        if self.payment_pending:
            return "PAYMENT_PENDING"
        if self.effective_us > now_us:
            return "SCHEDULED"
        return "ACTIVE"

    def row(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "grant_id": self.grant_id,
            "wallet_id": self.wallet_id,
            "customer_id": self.customer_id,
            "currency_id": self.currency_id,
            "resource_id": self.resource_id,
            "account_id": self.account_id,
            "hold_account_id": self.hold_account_id,
            "amount": self.amount,
            "grant_type": self.grant_type,
            "priority": self.priority,
            "effective_us": self.effective_us,
            "expire_us": self.expire_us,
            "created_us": self.created_us,
            "display_name": self.display_name,
            "payment_pending": self.payment_pending,
            "issued": self.issued,
            "consumed": self.consumed,
            "voided_us": self.voided_us,
            "expired_us": self.expired_us,
            "updated_us": self.updated_us,
        }


@dataclass(slots=True, eq=False)
class WalletState:
    id: str
    environment: str
    customer_id: str
    currency_id: str
    resource_id: str
    accounts: dict[str, str]  # kind -> account id (issuance, consumed, expired, voided)
    issued_total: int  # everything ever issued into this wallet (the issuance debit)
    grants: dict[str, GrantState] = field(default_factory=dict)  # loaded or touched
    # Cached: every grant in draw order, and the soonest expiry among unfinished grants.
    _ordered: list[GrantState] | None = None
    _next_due: int | None = None

    def sink(self, kind: str) -> str:
        return self.accounts[kind]

    def changed(self) -> None:
        """A grant was added, reordered, expired or voided: recompute the caches."""
        self._ordered = None

    def ordered(self) -> list[GrantState]:
        if self._ordered is None:
            self._ordered = sorted(self.grants.values(), key=GrantState.draw_key)
            expiries = [
                g.expire_us for g in self._ordered if g.expire_us is not None and not g.finished()
            ]
            self._next_due = min(expiries) if expiries else None
        return self._ordered

    def may_have_due(self, now_us: int) -> bool:
        self.ordered()
        return self._next_due is not None and self._next_due <= now_us

    def draw_order(self, now_us: int) -> list[GrantState]:
        return [g for g in self.ordered() if g.drawable(now_us)]

    def available(self, now_us: int) -> int:
        return sum(g.balance for g in self.ordered() if g.drawable(now_us))


def allocate(ordered: list[GrantState], units: int) -> list[tuple[GrantState, int]] | None:
    """Take ``units`` from the grants in order; None if they do not hold enough."""
    plan: list[tuple[GrantState, int]] = []
    remaining = units
    for grant in ordered:
        if remaining == 0:
            break
        take = min(grant.balance, remaining)
        plan.append((grant, take))
        remaining -= take
    return None if remaining else plan


@dataclass(slots=True, eq=False)
class ReservationState:
    environment: str
    reservation_id: str
    wallet_id: str
    customer_id: str
    currency_id: str
    resource_id: str
    amount: int
    parts: list[tuple[str, int]]  # (grant id, units held) in draw order
    status: str  # ACTIVE | RELEASED | EXPIRED
    consumed: int | None
    feature_id: str | None
    metadata: str | None  # JSON object of strings
    created_us: int
    expires_us: int
    resolved_us: int | None

    def row(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "reservation_id": self.reservation_id,
            "wallet_id": self.wallet_id,
            "customer_id": self.customer_id,
            "currency_id": self.currency_id,
            "resource_id": self.resource_id,
            "amount": self.amount,
            "parts": msgspec.json.encode(self.parts).decode(),
            "status": self.status,
            "consumed": self.consumed,
            "feature_id": self.feature_id,
            "metadata": self.metadata,
            "created_us": self.created_us,
            "expires_us": self.expires_us,
            "resolved_us": self.resolved_us,
        }


@dataclass(slots=True, eq=False)
class ConsumptionRecord:
    environment: str
    customer_id: str
    idempotency_key: str
    wallet_id: str
    currency_id: str
    resource_id: str
    amount: int
    entries: list[tuple[str, int]]
    timestamp_us: int
