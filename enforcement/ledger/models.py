"""What the ledger returns: immutable views with exact Decimal amounts and aware UTC times.

Each view has ``to_api()`` giving the camelCase JSON shape of Stigg's REST contract
(stigg-api.md section 2d), so the REST routes can return it as is.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

import msgspec

GrantStatus = Literal["PAYMENT_PENDING", "ACTIVE", "EXPIRED", "VOIDED", "SCHEDULED"]
ReservationStatus = Literal["ACTIVE", "RELEASED", "EXPIRED"]
EventType = Literal[
    "CREDITS_GRANTED",
    "CREDITS_EXPIRED",
    "CREDITS_CONSUMED",
    "CREDITS_VOIDED",
    "CREDITS_UPDATED",
    "CREDITS_CONSUMPTION_TRANSFER_SOURCE",
    "CREDITS_CONSUMPTION_TRANSFER_TARGET",
    "CREDITS_RESERVED",
    "CREDITS_RESERVATION_RELEASED",
    "CREDITS_RESERVATION_EXPIRED",
]

T = TypeVar("T")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _num(amount: Decimal | None) -> float | None:
    return None if amount is None else float(amount)


class _View(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Entry(_View, frozen=True, kw_only=True):
    """Credits moved from (or held on) one grant by one operation."""

    grant_id: str
    amount: Decimal

    def to_api(self) -> dict[str, Any]:
        return {"creditGrantId": self.grant_id, "amount": float(self.amount)}


class GrantView(_View, frozen=True, kw_only=True):
    environment: str
    id: str
    customer_id: str
    currency_id: str
    resource_id: str | None
    amount: Decimal
    consumed_amount: Decimal
    remaining: Decimal  # still in the grant (spendable once effective, unless expired)
    held: Decimal  # held by open reservations
    display_name: str
    grant_type: str
    priority: int
    effective_at: datetime
    expire_at: datetime | None
    created_at: datetime
    updated_at: datetime
    voided_at: datetime | None
    status: GrantStatus

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "amount": float(self.amount),
            "consumedAmount": float(self.consumed_amount),
            "currencyId": self.currency_id,
            "customerId": self.customer_id,
            "resourceId": self.resource_id,
            "displayName": self.display_name,
            "grantType": self.grant_type,
            "priority": self.priority,
            "effectiveAt": _iso(self.effective_at),
            "expireAt": _iso(self.expire_at),
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "voidedAt": _iso(self.voided_at),
            "status": self.status,
            "paymentCollection": (
                "PROCESSING" if self.status == "PAYMENT_PENDING" else "NOT_REQUIRED"
            ),
            "metadata": {},
        }


class Consumption(_View, frozen=True, kw_only=True):
    environment: str
    customer_id: str
    currency_id: str
    resource_id: str | None
    idempotency_key: str
    amount: Decimal
    timestamp: datetime
    entries: list[Entry]  # one per grant drawn, in draw order
    duplicate: bool  # True: this key was already consumed; nothing new was written
    available_after: Decimal | None  # the wallet's spendable balance right after (None: replay)

    def to_api(self) -> dict[str, Any]:
        return {
            "amount": float(self.amount),
            "currencyId": self.currency_id,
            "customerId": self.customer_id,
            "resourceId": self.resource_id,
            "timestamp": _iso(self.timestamp),
        }


class Reservation(_View, frozen=True, kw_only=True):
    environment: str
    id: str
    customer_id: str
    currency_id: str
    resource_id: str | None
    amount: Decimal
    entries: list[Entry]  # held per grant, in draw order
    status: ReservationStatus
    consumed_amount: Decimal | None
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None
    metadata: dict[str, str] | None
    duplicate: bool = False  # True: the same reservation was already made; nothing new written
    available_after: Decimal | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "amount": float(self.amount),
            "expiresAt": _iso(self.expires_at),
            # The contract knows ACTIVE and RELEASED; an expired hold was released by the clock.
            "status": "ACTIVE" if self.status == "ACTIVE" else "RELEASED",
        }
        if self.consumed_amount is not None:
            body["consumedAmount"] = float(self.consumed_amount)
        return body


class Release(_View, frozen=True, kw_only=True):
    reservation: Reservation
    consumed_amount: Decimal
    returned_amount: Decimal  # back to the grants' balances (or to a sink if the grant died)
    consumed_entries: list[Entry]  # per grant: from the hold first, then any excess
    available_after: Decimal

    def to_api(self) -> dict[str, Any]:
        return {"reservation": self.reservation.to_api()}


class Balance(_View, frozen=True, kw_only=True):
    """One wallet (environment, customer, currency, resource) at one instant.

    granted = available + scheduled + reserved + reserved_on_inactive_grants + consumed
              + expired + voided
    usage_limit - current_usage = available   (Stigg's CREDIT check fields)
    """

    environment: str
    customer_id: str
    currency_id: str
    resource_id: str | None
    available: Decimal
    reserved: Decimal  # held by open reservations on live grants
    reserved_on_inactive_grants: Decimal  # held on grants that expired or were voided meanwhile
    scheduled: Decimal  # in grants not yet effective
    pending_payment: Decimal  # granted but awaiting payment (not issued, not in granted)
    granted: Decimal  # ever issued into the wallet
    consumed: Decimal
    expired: Decimal
    voided: Decimal
    usage_limit: Decimal  # total of the grants usable now
    current_usage: Decimal  # of those: consumed or held
    as_of: datetime


class LedgerEvent(_View, frozen=True, kw_only=True):
    """One entry of the customer-facing ledger.

    ``amount`` is the event's net effect on the wallet's grant balances: positive for grants
    and returned holds, negative for consumption, expiry, voiding and reservation holds. The
    ``amount`` of all events of a wallet sums to its grants' remaining balances.
    """

    cursor: str
    event_id: str
    event_type: EventType
    environment: str
    customer_id: str
    currency_id: str
    resource_id: str | None
    grant_id: str
    amount: Decimal
    reservation_id: str | None
    feature_id: str | None
    hold_returned_amount: Decimal | None
    breakdown: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    timestamp: datetime

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "eventId": self.event_id,
            "eventType": self.event_type,
            "amount": float(self.amount),
            "creditGrantId": self.grant_id,
            "creditCurrencyId": self.currency_id,
            "customerId": self.customer_id,
            "resourceId": self.resource_id,
            "featureId": self.feature_id,
            "reservationId": self.reservation_id,
            "timestamp": _iso(self.timestamp),
        }
        if self.hold_returned_amount is not None:
            body["holdReturnedAmount"] = float(self.hold_returned_amount)
        if self.breakdown is not None:
            body["breakdown"] = [
                {
                    **item,
                    "amount": float(item["amount"]),
                    "creditCurrencyId": self.currency_id,
                    "customerId": self.customer_id,
                    "resourceId": self.resource_id,
                    "reservationId": self.reservation_id,
                    "timestamp": body["timestamp"],
                }
                for item in self.breakdown
            ]
        if self.metadata is not None:
            body["metadata"] = self.metadata
        return body


class Page(_View, Generic[T], frozen=True, kw_only=True):
    """A cursor page: pass ``next`` as ``after`` (older items), ``prev`` as ``before``."""

    data: list[T]
    next: str | None
    prev: str | None

    def to_api(self) -> dict[str, Any]:
        return {
            "data": [item.to_api() for item in self.data],  # type: ignore[attr-defined]
            "pagination": {"next": self.next, "prev": self.prev},
        }
