"""``check_invariants``: re-derive the books from the transfers and compare.

It proves, over the whole database in one snapshot:
- every transfer moves a positive amount between two different accounts of its own wallet;
- each account's cached debits/credits equal the sums of its transfers (balances derive from
  transfers), hence the balances of all accounts sum to zero (debits = credits);
- no account other than a wallet's issuance source is below zero (no overdraft), and no
  issuance account is above zero;
- each grant's cached ``consumed`` equals its transfers into the consumed sink, and each grant's
  hold account holds exactly what the open reservations say they hold on it;
- each reservation's hold transfers equal its amount, and it was resolved exactly once
  (resolution transfers out of the holds = amount when resolved, none while active);
- consumptions plus released reservations equal each wallet's consumed sink;
- the ledger events of each wallet sum to its grants' remaining balances.
Every violation found is listed in one InvariantViolation.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
from sqlalchemy import Connection, func, select

from enforcement.ledger import schema
from enforcement.ledger.errors import InvariantViolation

_t = schema.transfers
_a = schema.accounts
_g = schema.grants
_r = schema.reservations
_c = schema.consumptions
_e = schema.ledger_events


def _accounts_of(*kinds: str) -> Any:
    return select(_a.c.id).where(_a.c.kind.in_(kinds))


def _grouped(conn: Connection, keys: tuple[Any, ...], *where: Any) -> dict[tuple[Any, ...], int]:
    query = select(*keys, func.sum(_t.c.amount)).group_by(*keys)
    for clause in where:
        query = query.where(clause)
    return {tuple(row[:-1]): int(row[-1]) for row in conn.execute(query)}


def check_invariants(conn: Connection) -> None:
    problems: list[str] = []

    bad = conn.execute(
        select(func.count())
        .select_from(_t)
        .where((_t.c.amount <= 0) | (_t.c.debit_account_id == _t.c.credit_account_id))
    ).scalar_one()
    if bad:
        problems.append(f"{bad} transfers with a non-positive amount or one account on both sides")
    da, ca = _a.alias("da"), _a.alias("ca")
    crossing = conn.execute(
        select(func.count())
        .select_from(
            _t.join(da, da.c.id == _t.c.debit_account_id).join(
                ca, ca.c.id == _t.c.credit_account_id
            )
        )
        .where((da.c.wallet_id != _t.c.wallet_id) | (ca.c.wallet_id != _t.c.wallet_id))
    ).scalar_one()
    if crossing:
        problems.append(f"{crossing} transfers cross wallets")

    # Balances derive from transfers; their sum is zero; nothing is overdrawn.
    debits = _grouped(conn, (_t.c.debit_account_id,))
    credits = _grouped(conn, (_t.c.credit_account_id,))
    balance_of: dict[str, int] = {}
    total = 0
    query = select(_a.c.id, _a.c.kind, _a.c.wallet_id, _a.c.debits_posted, _a.c.credits_posted)
    sink_of_wallet: dict[str, int] = {}
    for row in conn.execute(query):
        summed = (debits.get((row.id,), 0), credits.get((row.id,), 0))
        if (row.debits_posted, row.credits_posted) != summed:
            problems.append(
                f"account {row.id} ({row.kind}) caches debits/credits "
                f"{row.debits_posted}/{row.credits_posted}, its transfers sum to "
                f"{summed[0]}/{summed[1]}"
            )
        balance = row.credits_posted - row.debits_posted
        balance_of[row.id] = balance
        total += balance
        if row.kind == schema.ISSUANCE and balance > 0:
            problems.append(f"issuance account {row.id} has a positive balance {balance}")
        if row.kind != schema.ISSUANCE and balance < 0:
            problems.append(f"account {row.id} ({row.kind}) is overdrawn: balance {balance}")
        if row.kind == schema.CONSUMED:
            sink_of_wallet[row.wallet_id] = balance
    unknown = {k[0] for k in (*debits, *credits)} - set(balance_of)
    if unknown:
        problems.append(f"transfers reference unknown accounts {sorted(unknown)[:5]}")
    if total != 0:
        problems.append(f"the balances of all accounts sum to {total}, not 0")

    # Reservations: held once, resolved once; open holds per grant.
    reserved = _grouped(conn, (_t.c.environment, _t.c.ref), _t.c.kind == "reserve")
    resolved = _grouped(
        conn,
        (_t.c.environment, _t.c.ref),
        _t.c.kind == "resolve",
        _t.c.debit_account_id.in_(_accounts_of(schema.HOLD)),
    )
    open_holds: dict[tuple[str, str], int] = defaultdict(int)
    consumed_of_wallet: dict[str, int] = defaultdict(int)
    query = select(
        _r.c.environment,
        _r.c.reservation_id,
        _r.c.wallet_id,
        _r.c.amount,
        _r.c.parts,
        _r.c.status,
        _r.c.consumed,
    )
    for row in conn.execute(query):
        key = (row.environment, row.reservation_id)
        parts = msgspec.json.decode(row.parts)
        if sum(units for _, units in parts) != row.amount or reserved.get(key, 0) != row.amount:
            problems.append(
                f"reservation {row.reservation_id}: amount {row.amount}, parts "
                f"{sum(u for _, u in parts)}, hold transfers {reserved.get(key, 0)}"
            )
        expected = 0 if row.status == "ACTIVE" else row.amount
        if resolved.get(key, 0) != expected:
            problems.append(
                f"reservation {row.reservation_id} ({row.status}) resolved "
                f"{resolved.get(key, 0)} of its hold, expected {expected}"
            )
        if row.status == "ACTIVE":
            for grant_id, units in parts:
                open_holds[(row.environment, grant_id)] += units
        elif row.consumed is not None:
            consumed_of_wallet[row.wallet_id] += row.consumed

    # Grants: consumed cache, holds, and what they still hold (for the event check below).
    consumed_of_grant = _grouped(
        conn,
        (_t.c.environment, _t.c.grant_id),
        _t.c.credit_account_id.in_(_accounts_of(schema.CONSUMED)),
    )
    remaining_of_wallet: dict[str, int] = defaultdict(int)
    query = select(
        _g.c.environment,
        _g.c.grant_id,
        _g.c.wallet_id,
        _g.c.consumed,
        _g.c.account_id,
        _g.c.hold_account_id,
    )
    for row in conn.execute(query):
        key = (row.environment, row.grant_id)
        if consumed_of_grant.get(key, 0) != row.consumed:
            problems.append(
                f"grant {row.grant_id}: cached consumed {row.consumed}, transfers say "
                f"{consumed_of_grant.get(key, 0)}"
            )
        if balance_of.get(row.hold_account_id, 0) != open_holds.get(key, 0):
            problems.append(
                f"grant {row.grant_id}: holds {balance_of.get(row.hold_account_id, 0)}, open "
                f"reservations say {open_holds.get(key, 0)}"
            )
        remaining_of_wallet[row.wallet_id] += balance_of.get(row.account_id, 0)

    # Every consumed credit is explained by a consumption or a released reservation.
    for wallet, units in conn.execute(
        select(_c.c.wallet_id, func.sum(_c.c.amount)).group_by(_c.c.wallet_id)
    ):
        consumed_of_wallet[wallet] += int(units)
    for wallet in set(sink_of_wallet) | set(consumed_of_wallet):
        if sink_of_wallet.get(wallet, 0) != consumed_of_wallet.get(wallet, 0):
            problems.append(
                f"wallet {wallet}: consumed sink {sink_of_wallet.get(wallet, 0)}, consumptions "
                f"and releases {consumed_of_wallet.get(wallet, 0)}"
            )

    # The customer-facing ledger adds up to the grants' remaining balances.
    events_of_wallet = {
        wallet: int(units)
        for wallet, units in conn.execute(
            select(_e.c.wallet_id, func.sum(_e.c.amount)).group_by(_e.c.wallet_id)
        )
    }
    for wallet in set(events_of_wallet) | set(remaining_of_wallet):
        if events_of_wallet.get(wallet, 0) != remaining_of_wallet.get(wallet, 0):
            problems.append(
                f"wallet {wallet}: ledger events sum to {events_of_wallet.get(wallet, 0)}, its "
                f"grants hold {remaining_of_wallet.get(wallet, 0)}"
            )

    if problems:
        raise InvariantViolation(
            f"{len(problems)} ledger invariant violation(s): " + "; ".join(problems[:50])
        )
