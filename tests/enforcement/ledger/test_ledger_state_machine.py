"""Stateful property test: random grants, consumptions, reservations, releases, voids, expiries
and clock jumps against a small reference model written here from the rules.

After every step: the books balance (``check_invariants``: double entry, sum zero, nothing
overdrawn, cached balances = derived), and the wallet's balance equals the model's. Every
consumption and reservation must draw exactly the grants the model draws, in Stigg's order.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from enforcement.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    Ledger,
    NotFound,
    ReservationAlreadyResolved,
)
from tests.enforcement.ledger.conftest import T0, postgres_ledger, sqlite_ledger

ENV, CUSTOMER, CURRENCY = "production", "customer-1", "credits"
NEVER = 2**62
amounts = st.integers(min_value=1, max_value=40).map(lambda n: Decimal(n) / 2)


@dataclass
class ModelGrant:
    id: str
    amount: Decimal
    priority: int
    grant_type: str
    effective: int  # seconds after T0
    expire: int | None
    created: int
    remaining: Decimal
    held: Decimal = Decimal(0)
    consumed: Decimal = Decimal(0)
    voided: bool = False
    expired: bool = False
    pending: bool = False  # PAYMENT_PENDING: not issued until paid
    issued: bool = True

    def live(self, now: int) -> bool:
        return (
            not self.pending
            and not self.voided
            and not self.expired
            and (self.expire is None or self.expire > now)
        )

    def live_if_paid(self, now: int) -> bool:
        return not self.voided and not self.expired and (self.expire is None or self.expire > now)

    def drawable(self, now: int) -> bool:
        return self.live(now) and self.effective <= now and self.remaining > 0

    def key(self) -> tuple[object, ...]:
        expire = NEVER if self.expire is None else self.expire
        promo = 0 if self.grant_type == "PROMOTIONAL" else 1
        return (self.priority, expire, promo, self.effective, self.created, self.id)


@dataclass
class ModelReservation:
    amount: Decimal
    parts: list[tuple[str, Decimal]]
    expires: int
    status: str = "ACTIVE"


@dataclass
class Model:
    grants: dict[str, ModelGrant] = field(default_factory=dict)
    reservations: dict[str, ModelReservation] = field(default_factory=dict)
    consumptions: dict[str, tuple[Decimal, list[tuple[str, Decimal]]]] = field(default_factory=dict)
    consumed: Decimal = Decimal(0)
    expired: Decimal = Decimal(0)
    voided: Decimal = Decimal(0)

    def sweep(self, now: int) -> None:
        for g in self.grants.values():
            if not g.voided and not g.expired and g.expire is not None and g.expire <= now:
                self.expired += g.remaining
                g.remaining = Decimal(0)
                g.expired = True
        for r in self.reservations.values():
            if r.status == "ACTIVE" and r.expires <= now:
                self.give_back(r, [(gid, units) for gid, units in r.parts], now)
                r.status = "EXPIRED"

    def give_back(self, r: ModelReservation, parts: list[tuple[str, Decimal]], now: int) -> None:
        for gid, units in parts:
            g = self.grants[gid]
            g.held -= units
            if g.live(now):
                g.remaining += units
            elif g.voided:
                self.voided += units
            else:
                self.expired += units

    def draw(self, units: Decimal, now: int) -> list[tuple[str, Decimal]] | None:
        plan, left = [], units
        for g in sorted((g for g in self.grants.values() if g.drawable(now)), key=ModelGrant.key):
            if left == 0:
                break
            take = min(g.remaining, left)
            plan.append((g.id, take))
            left -= take
        return None if left else plan

    def available(self, now: int) -> Decimal:
        return sum((g.remaining for g in self.grants.values() if g.drawable(now)), Decimal(0))


class LedgerMachine(RuleBasedStateMachine):
    """Runs on a fresh SQLite file per example (the PostgreSQL variant overrides new_ledger)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="ledger-sm-")
        self.ledger = self.new_ledger()
        self.model = Model()
        self.now = 0  # seconds after T0
        self.grant_seq = 0
        self.fields: dict[str, dict[str, object]] = {}

    def new_ledger(self) -> Ledger:
        return sqlite_ledger(Path(self.tmp) / "ledger.db")

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def at(self) -> object:
        return T0 + timedelta(seconds=self.now)

    # --- rules -----------------------------------------------------------------------------

    @rule(
        amount=amounts,
        priority=st.sampled_from([0, 10, 50]),
        grant_type=st.sampled_from(["PAID", "PROMOTIONAL"]),
        delay=st.sampled_from([0, 0, 0, 600]),
        lifetime=st.one_of(st.none(), st.integers(min_value=60, max_value=5000)),
        created=st.integers(min_value=0, max_value=3),
        status=st.sampled_from(["ACTIVE"] * 4 + ["PAYMENT_PENDING"]),
    )
    def add_grant(
        self,
        amount: Decimal,
        priority: int,
        grant_type: str,
        delay: int,
        lifetime: int | None,
        created: int,
        status: str,
    ) -> None:
        gid = f"g{self.grant_seq}"
        self.grant_seq += 1
        effective = self.now + delay
        expire = None if lifetime is None else effective + lifetime
        fields = {
            "id": gid,
            "customer_id": CUSTOMER,
            "currency_id": CURRENCY,
            "amount": amount,
            "priority": priority,
            "grant_type": grant_type,
            "effective_at": T0 + timedelta(seconds=effective),
            "expire_at": None if expire is None else T0 + timedelta(seconds=expire),
            "created_at": T0 + timedelta(seconds=created),
        }
        self.model.sweep(self.now)
        self.ledger.grant(ENV, now=self.at(), status=status, **fields)
        self.ledger.grant(ENV, now=self.at(), status=status, **fields)  # re-applied: no change
        pending = status == "PAYMENT_PENDING"
        self.model.grants[gid] = ModelGrant(
            gid,
            amount,
            priority,
            grant_type,
            effective,
            expire,
            created,
            remaining=Decimal(0) if pending else amount,
            pending=pending,
            issued=not pending,
        )
        self.fields[gid] = fields
        self.model.sweep(self.now)  # a grant may arrive past its expiry

    @precondition(lambda self: any(g.pending for g in self.model.grants.values()))
    @rule(data=st.data())
    def pay(self, data: st.DataObject) -> None:
        """The control plane re-sends a PAYMENT_PENDING grant as ACTIVE: it is issued now,
        unless it expired or was voided meanwhile."""
        gid = data.draw(
            st.sampled_from(sorted(g.id for g in self.model.grants.values() if g.pending))
        )
        m = self.model
        m.sweep(self.now)
        self.ledger.grant(ENV, now=self.at(), status="ACTIVE", **self.fields[gid])
        g = m.grants[gid]
        g.pending = False
        if not g.voided and not g.expired:
            g.remaining = g.amount
            g.issued = True

    @rule(amount=amounts, key=st.sampled_from([f"k{n}" for n in range(6)]) | st.uuids().map(str))
    def consume(self, amount: Decimal, key: str) -> None:
        m = self.model
        m.sweep(self.now)
        seen = m.consumptions.get(key)
        if seen is not None and seen[0] != amount:
            with pytest.raises(IdempotencyConflict):
                self.ledger.consume(ENV, CUSTOMER, CURRENCY, amount, key, now=self.at())
            return
        plan = seen[1] if seen is not None else m.draw(amount, self.now)
        if plan is None:
            with pytest.raises(InsufficientCredits) as refused:
                self.ledger.consume(ENV, CUSTOMER, CURRENCY, amount, key, now=self.at())
            assert refused.value.available == m.available(self.now)
            return
        result = self.ledger.consume(ENV, CUSTOMER, CURRENCY, amount, key, now=self.at())
        assert [(e.grant_id, e.amount) for e in result.entries] == plan
        assert result.duplicate == (seen is not None)
        if seen is None:
            for gid, take in plan:
                m.grants[gid].remaining -= take
                m.grants[gid].consumed += take
            m.consumed += amount
            m.consumptions[key] = (amount, plan)

    @rule(
        amount=amounts,
        rid=st.sampled_from([f"r{n}" for n in range(8)]),
        ttl=st.sampled_from([60, 600, 3600]),
    )
    def reserve(self, amount: Decimal, rid: str, ttl: int) -> None:
        m = self.model
        m.sweep(self.now)
        seen = m.reservations.get(rid)
        call = (ENV, CUSTOMER, CURRENCY, amount, rid, ttl)
        if seen is not None:
            if seen.amount != amount:
                with pytest.raises(IdempotencyConflict):
                    self.ledger.reserve(*call, now=self.at())
            else:
                assert self.ledger.reserve(*call, now=self.at()).duplicate
            return
        plan = m.draw(amount, self.now)
        if plan is None:
            with pytest.raises(InsufficientCredits):
                self.ledger.reserve(*call, now=self.at())
            return
        held = self.ledger.reserve(*call, now=self.at())
        assert [(e.grant_id, e.amount) for e in held.entries] == plan
        for gid, take in plan:
            m.grants[gid].remaining -= take
            m.grants[gid].held += take
        m.reservations[rid] = ModelReservation(amount, plan, self.now + ttl)

    @rule(rid=st.sampled_from([f"r{n}" for n in range(8)]), used=st.integers(0, 50))
    def release(self, rid: str, used: int) -> None:
        m = self.model
        m.sweep(self.now)
        consumed = Decimal(used) / 2
        r = m.reservations.get(rid)
        if r is None:
            with pytest.raises(NotFound):
                self.ledger.release(ENV, rid, consumed, now=self.at())
            return
        if r.status != "ACTIVE":
            with pytest.raises(ReservationAlreadyResolved):
                self.ledger.release(ENV, rid, consumed, now=self.at())
            return
        excess = max(Decimal(0), consumed - r.amount)
        excess_plan = m.draw(excess, self.now) if excess else []
        if excess_plan is None:
            with pytest.raises(InsufficientCredits):
                self.ledger.release(ENV, rid, consumed, now=self.at())
            return
        released = self.ledger.release(ENV, rid, consumed, now=self.at())
        expected, left, back = [], min(consumed, r.amount), []
        for gid, units in r.parts:
            take = min(units, left)
            left -= take
            if take:
                expected.append((gid, take))
                m.grants[gid].held -= take
                m.grants[gid].consumed += take
            if units - take:
                back.append((gid, units - take))
        m.give_back(r, back, self.now)
        for gid, take in excess_plan:
            expected.append((gid, take))
            m.grants[gid].remaining -= take
            m.grants[gid].consumed += take
        m.consumed += consumed
        r.status = "RELEASED"
        assert [(e.grant_id, e.amount) for e in released.consumed_entries] == expected

    @precondition(lambda self: self.model.grants)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        gid = data.draw(st.sampled_from(sorted(self.model.grants)))
        m = self.model
        m.sweep(self.now)
        g = m.grants[gid]
        view = self.ledger.void_grant(ENV, gid, now=self.at())
        if not g.voided and not g.expired:
            m.voided += g.remaining
            g.remaining = Decimal(0)
            g.voided = True
        assert view.status == ("VOIDED" if g.voided else "EXPIRED")

    @rule(seconds=st.sampled_from([1, 59, 60, 300, 1800, 4000]))
    def advance_clock(self, seconds: int) -> None:
        self.now += seconds

    @rule()
    def expire_due(self) -> None:
        self.ledger.expire_due(self.at())
        self.model.sweep(self.now)

    # --- after every step ------------------------------------------------------------------

    @invariant()
    def books_balance_and_match_the_model(self) -> None:
        self.ledger.check_invariants()
        m, now = self.model, self.now
        m.sweep(now)
        b = self.ledger.balance(ENV, CUSTOMER, CURRENCY, now=self.at())
        live = [g for g in m.grants.values() if g.live(now)]
        effective = [g for g in live if g.effective <= now]
        expected = {
            "available": m.available(now),
            "scheduled": sum((g.remaining for g in live if g.effective > now), Decimal(0)),
            "reserved": sum((g.held for g in live), Decimal(0)),
            "reserved_on_inactive_grants": sum(
                (g.held for g in m.grants.values() if not g.live(now)), Decimal(0)
            ),
            "granted": sum((g.amount for g in m.grants.values() if g.issued), Decimal(0)),
            "pending_payment": sum(
                (g.amount for g in m.grants.values() if g.pending and g.live_if_paid(now)),
                Decimal(0),
            ),
            "consumed": m.consumed,
            "expired": m.expired,
            "voided": m.voided,
            "usage_limit": sum((g.amount for g in effective), Decimal(0)),
            "current_usage": sum((g.amount - g.remaining for g in effective), Decimal(0)),
        }
        actual = {name: getattr(b, name) for name in expected}
        assert actual == expected
        # No grant ever below zero, and what was granted is all accounted for.
        assert all(g.remaining >= 0 and g.held >= 0 for g in m.grants.values())
        total = sum(
            actual[k]
            for k in expected
            if k not in ("granted", "usage_limit", "current_usage", "pending_payment")
        )
        assert total == expected["granted"]


def test_ledger_matches_its_model_sqlite() -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_ledger_matches_its_model_postgres(pg_template: tuple[str, str]) -> None:
    class PostgresMachine(LedgerMachine):
        def new_ledger(self) -> Ledger:
            return postgres_ledger(pg_template)

    run_state_machine_as_test(
        PostgresMachine,
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
