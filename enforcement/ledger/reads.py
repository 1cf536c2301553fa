"""Read side: balances, grants, reservations and the ledger listing. Reads never lock and never
write; each runs in one snapshot (WAL read on SQLite, REPEATABLE READ on PostgreSQL).

Listings are newest first, with opaque cursors: ``after=next`` pages to older items,
``before=prev`` to newer ones (Stigg's ``{data, pagination{next, prev}}``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, get_args

import msgspec
from sqlalchemy import Column, Connection, Select, and_, bindparam, or_

from enforcement.ledger import schema
from enforcement.ledger.amounts import from_us, to_decimal
from enforcement.ledger.errors import InvalidInput
from enforcement.ledger.ids import wallet_id
from enforcement.ledger.models import Balance, EventType, GrantView, LedgerEvent, Page
from enforcement.ledger.ops import grant_view
from enforcement.ledger.unit import (
    DUE_RESERVATIONS,
    GRANT_SELECT,
    HOLD_ALIAS,
    WALLET_ACCOUNTS,
    grant_from_row,
)

T = TypeVar("T")
MAX_PAGE = 1000
EVENT_TYPES = frozenset(get_args(EventType))
_grants = schema.grants
_events = schema.ledger_events

# Every grant of a wallet that still counts: not finished, or still holding credits.
BALANCE_GRANTS = GRANT_SELECT.where(
    _grants.c.wallet_id == bindparam("w"),
    or_(
        and_(_grants.c.voided_us.is_(None), _grants.c.expired_us.is_(None)),
        HOLD_ALIAS.c.credits_posted > HOLD_ALIAS.c.debits_posted,
    ),
)


def balance(
    conn: Connection,
    environment: str,
    customer_id: str,
    currency_id: str,
    resource_id: str,
    now_us: int,
) -> Balance:
    wid = wallet_id(environment, customer_id, currency_id, resource_id)
    sinks = {
        row.kind: row.credits_posted - row.debits_posted
        for row in conn.execute(WALLET_ACCOUNTS, {"w": wid})
    }
    available = reserved = reserved_dead = scheduled = pending = 0
    expired_unswept = voided_unswept = usage_limit = current_usage = 0
    loaded = {
        row.grant_id: grant_from_row(row)
        for row in (conn.execute(BALANCE_GRANTS, {"w": wid}) if sinks else ())
    }
    # Holds whose TTL passed are already free, even if no write has swept them yet.
    for row in DUE_RESERVATIONS.rows(conn, {"w": wid, "now": now_us}) if sinks else ():
        for grant_id, units in msgspec.json.decode(row.parts):
            held = loaded[grant_id]
            held.held -= units
            if held.live(now_us):
                held.balance += units
            elif held.voided_us is not None:
                voided_unswept += units
            else:
                expired_unswept += units
    for g in loaded.values():
        if g.payment_pending and not g.finished() and not g.due(now_us):
            pending += g.amount
        live = g.live(now_us)
        if live:
            reserved += g.held
        else:
            reserved_dead += g.held
        if g.due(now_us):
            expired_unswept += g.balance  # sweeping would move it to the expired sink
        elif live and g.effective_us > now_us:
            scheduled += g.balance
        elif live:
            available += g.balance
            usage_limit += g.amount
            current_usage += g.amount - g.balance
    return Balance(
        environment=environment,
        customer_id=customer_id,
        currency_id=currency_id,
        resource_id=resource_id or None,
        available=to_decimal(available),
        reserved=to_decimal(reserved),
        reserved_on_inactive_grants=to_decimal(reserved_dead),
        scheduled=to_decimal(scheduled),
        pending_payment=to_decimal(pending),
        granted=to_decimal(-sinks.get(schema.ISSUANCE, 0)),
        consumed=to_decimal(sinks.get(schema.CONSUMED, 0)),
        expired=to_decimal(sinks.get(schema.EXPIRED, 0) + expired_unswept),
        voided=to_decimal(sinks.get(schema.VOIDED, 0) + voided_unswept),
        usage_limit=to_decimal(usage_limit),
        current_usage=to_decimal(current_usage),
        as_of=from_us(now_us),
    )


def get_grant(conn: Connection, environment: str, grant_id: str, now_us: int) -> GrantView | None:
    row = conn.execute(
        GRANT_SELECT.where(_grants.c.environment == environment, _grants.c.grant_id == grant_id)
    ).first()
    return None if row is None else grant_view(grant_from_row(row), now_us)


MAX_CURSOR = 2**63 - 1  # seq is a signed 64-bit integer in both databases


def parse_cursor(cursor: str | None, name: str) -> int | None:
    """A cursor as the listings return them: ASCII decimal digits of a 64-bit ``seq``.

    Anything else (other digits, e.g. ``"²"``; a value beyond 64 bits, which the database
    driver would refuse with OverflowError) is InvalidInput naming the parameter.
    """
    if cursor is None:
        return None
    if (
        not isinstance(cursor, str)
        or not cursor.isascii()
        or not cursor.isdigit()
        or len(cursor) > 19
        or int(cursor) > MAX_CURSOR
    ):
        raise InvalidInput(
            f"{name} must be a cursor returned by a previous page, got {cursor[:40]!r}"
            if isinstance(cursor, str)
            else f"{name} must be a cursor returned by a previous page"
        )
    return int(cursor)


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")


def paginate(
    conn: Connection,
    query: Select[Any],
    seq: Column[int],
    after: str | None,
    before: str | None,
    limit: int,
    view: Callable[[Any], T],
) -> Page[T]:
    """Newest-first keyset pagination over an ever-increasing ``seq``.

    ``after``: items older than that cursor; ``before``: items newer than it; both: the items
    between the two (newest first, as an ``after`` page limited below by ``before``).
    """
    check_limit(limit)
    after_seq, before_seq = parse_cursor(after, "after"), parse_cursor(before, "before")
    if before_seq is not None and after_seq is None:
        rows: Sequence[Any] = conn.execute(
            query.where(seq > before_seq).order_by(seq.asc()).limit(limit + 1)
        ).all()
        newer = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        older = bool(rows)  # the `before` item itself is older than this page
    else:
        if after_seq is not None:
            query = query.where(seq < after_seq)
        if before_seq is not None:
            query = query.where(seq > before_seq)
        rows = conn.execute(query.order_by(seq.desc()).limit(limit + 1)).all()
        # With `before`, that item itself is older than this page.
        older = len(rows) > limit or (before_seq is not None and bool(rows))
        rows = rows[:limit]
        newer = after_seq is not None and bool(rows)
    return Page(
        data=[view(row) for row in rows],
        next=str(rows[-1].seq) if rows and older else None,
        prev=str(rows[0].seq) if rows and newer else None,
    )


def list_grants(
    conn: Connection,
    environment: str,
    customer_id: str,
    currency_id: str | None,
    resource_id: str,
    after: str | None,
    before: str | None,
    limit: int,
    now_us: int,
) -> Page[GrantView]:
    query = GRANT_SELECT.add_columns(_grants.c.seq).where(
        _grants.c.environment == environment,
        _grants.c.customer_id == customer_id,
        _grants.c.resource_id == resource_id,  # '' = customer-level grants only (as Stigg)
    )
    if currency_id is not None:
        query = query.where(_grants.c.currency_id == currency_id)
    return paginate(
        conn,
        query,
        _grants.c.seq,
        after,
        before,
        limit,
        lambda row: grant_view(grant_from_row(row), now_us),
    )


def _event_view(row: Any) -> LedgerEvent:
    breakdown = None
    if row.breakdown is not None:
        breakdown = [
            {"eventType": kind, "creditGrantId": grant, "amount": to_decimal(units)}
            for kind, grant, units in msgspec.json.decode(row.breakdown)
        ]
    return LedgerEvent(
        cursor=str(row.seq),
        event_id=row.event_id,
        event_type=row.event_type,
        environment=row.environment,
        customer_id=row.customer_id,
        currency_id=row.currency_id,
        resource_id=row.resource_id or None,
        grant_id=row.grant_id,
        amount=to_decimal(row.amount),
        reservation_id=row.reservation_id,
        feature_id=row.feature_id,
        hold_returned_amount=None if row.hold_returned is None else to_decimal(row.hold_returned),
        breakdown=breakdown,
        metadata=None if row.metadata is None else msgspec.json.decode(row.metadata),
        timestamp=from_us(row.timestamp_us),
    )


def ledger_events(
    conn: Connection,
    environment: str,
    customer_id: str | None,
    currency_id: str | None,
    resource_id: str | None,
    reservation_id: str | None,
    event_types: Sequence[str] | None,
    after: str | None,
    before: str | None,
    limit: int,
) -> Page[LedgerEvent]:
    query = _events.select().where(_events.c.environment == environment)
    if customer_id is not None:
        query = query.where(_events.c.customer_id == customer_id)
    if currency_id is not None:
        query = query.where(_events.c.currency_id == currency_id)
    if resource_id is not None:
        query = query.where(_events.c.resource_id == resource_id)
    if reservation_id is not None:
        query = query.where(_events.c.reservation_id == reservation_id)
    if event_types:
        unknown = sorted(set(event_types) - EVENT_TYPES)
        if unknown:
            raise InvalidInput(f"unknown eventType {', '.join(unknown)}")
        query = query.where(_events.c.event_type.in_(list(event_types)))
    return paginate(conn, query, _events.c.seq, after, before, limit, _event_view)
