"""Credits on the enforcement side: the ledger (enforcement/ledger/) plus what checks need.

- The ledger is the authority: every consumption, reservation, release, grant and void runs
  through it (atomic, zero overdraft). Its calls block, so callers run them in threads;
  consumptions from the REST routes go to the ledger's writer process instead (``submit``,
  enforcement/ledger/writer.py: the same ledger code on the same database, on another core).
- Checks must not do I/O, so this keeps a cache of every wallet's balance in memory: warmed
  from the ledger's wallets on start; a consumption or reservation made here updates it from
  the ledger's own result (``available_after``, no extra read) and marks the wallet for an
  exact re-read within ~0.2 s; grants, voids and releases re-read it at once; every few
  seconds all wallets are re-read (writes by other processes, expiries by the clock). A check
  may thus see a balance a few seconds old when ANOTHER process spent from the wallet; a
  reservation or consumption never relies on the cache (the ledger decides).
- Grants published by the control plane arrive through the sync and are applied to the ledger
  idempotently by grant id (a delete voids the grant).
- The REST grant route stores what the ledger does not model (cost, metadata, comment) in the
  enforcement store, so grant listings return them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import select

from byoc_platform.catalog import Change, Grant, decode_entity
from byoc_platform.settings import Settings
from enforcement.counters import UsageCounters
from enforcement.engine import WalletBalance
from enforcement.ledger import Balance, Ledger, LedgerError, NotFound
from enforcement.ledger import schema as ledger_schema
from enforcement.ledger.writer import LedgerWriter

log = logging.getLogger(__name__)

WalletKey = tuple[str, str, str, str]  # environment, customer, currency, resource ("" = none)


def to_wallet(b: Balance) -> WalletBalance:
    return WalletBalance(
        usage_limit=float(b.usage_limit),
        current_usage=float(b.current_usage),
        reserved=float(b.reserved),
        available=float(b.available),
        any_grant=b.granted > 0 or b.pending_payment > 0 or b.scheduled > 0,
        revoked=(
            b.voided > 0 and b.usage_limit == 0 and b.scheduled == 0 and b.pending_payment == 0
        ),
        updated_at=b.as_of.timestamp(),
        reserved_on_expired_grants=float(b.reserved_on_inactive_grants),
    )


class CreditService:
    def __init__(self, settings: Settings, counters: UsageCounters) -> None:
        self.settings = settings
        self.counters = counters
        self._ledger: Ledger | None = None
        self._writer: LedgerWriter | None = None
        self._balances: dict[WalletKey, WalletBalance] = {}
        self._dirty: set[WalletKey] = set()
        self._lock = threading.Lock()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the credit ledger is not open")
        return self._ledger

    def open(
        self, *, writer_process: bool = True, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Open the ledger; with ``writer_process``, consumptions go to a writer process whose
        answers are read on ``loop`` (the runtime's event loop), else on a thread."""
        self._ledger = Ledger.from_settings(self.settings)
        self._ledger.create_schema()
        if writer_process:
            self._writer = LedgerWriter(self.settings.ledger.database_url, loop=loop)
            self._writer.start()
        self.refresh_all(discover=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def submit(self, op: Any, callback: Callable[[Any, BaseException | None], None]) -> None:
        """Queue a ledger operation without blocking (the writer process, else in-process);
        ``callback(result, error)`` runs on another thread once it committed."""
        if self._writer is not None:
            self._writer.submit(op, callback)
        else:
            self.ledger.submit(op, callback)

    # --- the balance cache (read by checks) ---------------------------------------------

    def balance(
        self, environment: str, customer_id: str, resource_id: str | None, currency_id: str
    ) -> WalletBalance | None:
        return self._balances.get((environment, customer_id, currency_id, resource_id or ""))

    def refresh(
        self, environment: str, customer_id: str, currency_id: str, resource_id: str | None
    ) -> WalletBalance:
        """Read one wallet's balance from the ledger into the cache (blocking)."""
        key = (environment, customer_id, currency_id, resource_id or "")
        read_at = time.time()
        b = self.ledger.balance(environment, customer_id, currency_id, resource_id)
        wallet = to_wallet(b)
        with self._lock:
            current = self._balances.get(key)
            if current is not None and current.updated_at > read_at:
                # A spend applied while this read ran may be missing from it: keep the spend's
                # value and read again soon.
                self._dirty.add(key)
                return current
            wallet = replace(wallet, updated_at=max(wallet.updated_at, read_at))
            self._balances[key] = wallet
        return wallet

    def after_spend(
        self,
        environment: str,
        customer_id: str,
        currency_id: str,
        resource_id: str | None,
        available_after: Decimal | None,
        held: float = 0.0,
    ) -> WalletBalance | None:
        """Apply a consumption's or reservation's result to the cache without a ledger read.

        Concurrent results may arrive out of order; spending only lowers the balance, so the
        lowest reported value is kept, and the wallet is re-read exactly soon after
        (:meth:`refresh_dirty`), which also covers grants that raced with the spend.
        """
        key = (environment, customer_id, currency_id, resource_id or "")
        with self._lock:
            self._dirty.add(key)
            current = self._balances.get(key)
            if current is None or available_after is None:
                return current
            available = min(current.available, float(available_after))
            updated = WalletBalance(  # not dataclasses.replace: this runs per consumption
                usage_limit=current.usage_limit,
                # Credits are whole 1e-5 units; float differences are not (0.10001999999985856).
                current_usage=round(current.usage_limit - available, 5),
                reserved=round(current.reserved + held, 5),
                available=available,
                any_grant=current.any_grant,
                revoked=current.revoked,
                updated_at=time.time(),
                usage_period_end=current.usage_period_end,
                reserved_on_expired_grants=current.reserved_on_expired_grants,
            )
            self._balances[key] = updated
            return updated

    @property
    def has_dirty(self) -> bool:
        return bool(self._dirty)

    def refresh_dirty(self) -> int:
        """Re-read every wallet spent from since the last call (blocking)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for env, customer, currency, resource in dirty:
            try:
                self.refresh(env, customer, currency, resource or None)
            except LedgerError as exc:
                log.warning("balance of %s/%s/%s unreadable: %s", env, customer, currency, exc)
        return len(dirty)

    def refresh_all(self, *, discover: bool = False) -> int:
        """Refresh every cached wallet (and, with ``discover``, every wallet the ledger has)."""
        keys = set(self._balances)
        if discover:
            wallets = ledger_schema.wallets
            with self.ledger.engine.connect() as conn:
                rows = conn.execute(
                    select(
                        wallets.c.environment,
                        wallets.c.customer_id,
                        wallets.c.currency_id,
                        wallets.c.resource_id,
                    )
                ).all()
            keys.update((r[0], r[1], r[2], r[3] or "") for r in rows)
        for env, customer, currency, resource in keys:
            try:
                self.refresh(env, customer, currency, resource or None)
            except LedgerError as exc:
                log.warning("balance of %s/%s/%s unreadable: %s", env, customer, currency, exc)
        return len(keys)

    def maintain(self) -> None:
        """Expire due grants and reservations, then refresh every wallet (blocking)."""
        self.ledger.expire_due()
        self.refresh_all(discover=True)

    def currencies_of(
        self, environment: str, customer_id: str, resource_id: str | None = None
    ) -> list[str]:
        resource = resource_id or ""
        return sorted(
            {
                currency
                for (env, customer, currency, res), b in list(self._balances.items())
                if env == environment
                and customer == customer_id
                and res == resource
                and b.any_grant
            }
        )

    # --- grants from the control plane (sync thread) --------------------------------------

    def apply_grant_change(self, environment: str, change: Change) -> None:
        try:
            if change.op == "delete":
                try:
                    view = self.ledger.void_grant(environment, change.id)
                except NotFound:
                    return
            else:
                grant = decode_entity("grant", change.data)
                assert isinstance(grant, Grant)
                view = self.ledger.grant(environment, grant)
        except msgspec.ValidationError as exc:
            # Data this runtime cannot read (a newer control plane's schema) would fail on every
            # replay of the page: skipped, so the changes after it still arrive.
            log.error("grant %s from the control plane is not a valid grant: %s", change.id, exc)
            return
        except LedgerError as exc:
            # A grant the ledger refuses (e.g. edited amount) must not stall the feed.
            log.error("grant %s from the control plane refused by the ledger: %s", change.id, exc)
            return
        self.refresh(environment, view.customer_id, view.currency_id, view.resource_id)

    # --- budget spend ---------------------------------------------------------------------

    def count_spend(
        self,
        environment: str,
        customer_id: str,
        resource_id: str | None,
        currency_id: str,
        amount: float,
    ) -> None:
        if amount > 0:
            self.counters.spend(environment, customer_id, resource_id, currency_id, amount)
