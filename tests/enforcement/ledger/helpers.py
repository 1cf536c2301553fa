"""Small helpers shared by the ledger tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from enforcement.ledger import GrantView, Ledger, LedgerEvent
from tests.enforcement.ledger.conftest import T0

ENV = "production"
CUSTOMER = "customer-1"
CURRENCY = "credits"


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def grant(ledger: Ledger, grant_id: str, amount: Any, **fields: Any) -> GrantView:
    env = fields.pop("environment", ENV)
    now = fields.pop("now", T0)
    fields.setdefault("customer_id", CUSTOMER)
    fields.setdefault("currency_id", CURRENCY)
    fields.setdefault("created_at", T0)
    fields.setdefault("effective_at", T0)
    return ledger.grant(env, id=grant_id, amount=amount, now=now, **fields)


def consume(ledger: Ledger, amount: Any, key: str, **kw: Any):  # type: ignore[no-untyped-def]
    env = kw.pop("environment", ENV)
    customer = kw.pop("customer_id", CUSTOMER)
    currency = kw.pop("currency_id", CURRENCY)
    kw.setdefault("now", T0)
    return ledger.consume(env, customer, currency, amount, key, **kw)


def available(ledger: Ledger, now: datetime = T0, **kw: Any) -> Decimal:
    env = kw.pop("environment", ENV)
    return ledger.balance(env, kw.pop("customer_id", CUSTOMER), CURRENCY, now=now, **kw).available


def remaining(ledger: Ledger, grant_id: str, environment: str = ENV) -> Decimal:
    return ledger.get_grant(environment, grant_id, now=T0).remaining


def all_events(ledger: Ledger, environment: str = ENV, **filters: Any) -> list[LedgerEvent]:
    """Every event, oldest first, by walking the cursor pages."""
    events: list[LedgerEvent] = []
    after = None
    while True:
        page = ledger.ledger_events(environment, after=after, limit=7, **filters)
        events.extend(page.data)
        if page.next is None:
            return list(reversed(events))
        after = page.next
