"""The ledger's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Money lives in ``accounts`` and moves only by rows of ``transfers`` (double entry: one debit
account, one credit account, one positive amount). ``debits_posted``/``credits_posted`` on an
account are a cache of the sums of its transfers, updated in the same transaction and audited
by ``check_invariants``. CHECK constraints repeat the no-overdraft rule in the database itself
(TigerBeetle's ``debits_must_not_exceed_credits``), and triggers make transfers, consumptions and
ledger events append-only, so a bug elsewhere cannot silently edit history.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# Autoincrementing sequence: INTEGER PRIMARY KEY on SQLite (the rowid), BIGSERIAL elsewhere.
_Seq = BigInteger().with_variant(Integer(), "sqlite")
_ID = String(32)  # 128-bit ids as hex: derived from the operation (see ids.py)
_NAME = String(255)  # caller-supplied identifiers

# Account kinds. Per wallet: issuance (the source of every grant; the only account that may go
# negative), consumed / expired / voided (sinks). Per grant: grant (spendable) and hold (credits
# held by open reservations, so a release can give them back to the very grant they came from).
ISSUANCE, CONSUMED, EXPIRED, VOIDED, GRANT, HOLD = (
    "issuance",
    "consumed",
    "expired",
    "voided",
    "grant",
    "hold",
)
WALLET_ACCOUNT_KINDS = (ISSUANCE, CONSUMED, EXPIRED, VOIDED)

wallets = Table(
    "ledger_wallets",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("environment", _NAME, nullable=False),
    Column("customer_id", _NAME, nullable=False),
    Column("currency_id", _NAME, nullable=False),
    Column("resource_id", _NAME, nullable=False),  # '' = customer level
    Column("created_us", BigInteger, nullable=False),
    UniqueConstraint("environment", "customer_id", "currency_id", "resource_id"),
)

accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("wallet_id", _ID, ForeignKey("ledger_wallets.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("grant_id", _NAME, nullable=True),
    Column("debits_posted", BigInteger, nullable=False, server_default="0"),
    Column("credits_posted", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("debits_posted >= 0 AND credits_posted >= 0", name="posted_non_negative"),
    CheckConstraint(
        "kind = 'issuance' OR debits_posted <= credits_posted",
        name="debits_must_not_exceed_credits",
    ),
    CheckConstraint(
        "kind <> 'issuance' OR credits_posted <= debits_posted",
        name="credits_must_not_exceed_debits",
    ),
    Index("ix_ledger_accounts_wallet", "wallet_id"),
)

grants = Table(
    "ledger_grants",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("environment", _NAME, nullable=False),
    Column("grant_id", _NAME, nullable=False),
    Column("wallet_id", _ID, ForeignKey("ledger_wallets.id"), nullable=False),
    Column("customer_id", _NAME, nullable=False),
    Column("currency_id", _NAME, nullable=False),
    Column("resource_id", _NAME, nullable=False),
    Column("account_id", _ID, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("hold_account_id", _ID, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("grant_type", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("effective_us", BigInteger, nullable=False),
    Column("expire_us", BigInteger, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("display_name", Text, nullable=False),
    Column("payment_pending", Boolean, nullable=False),
    Column("issued", Boolean, nullable=False),  # the issuance transfer has been posted
    Column("consumed", BigInteger, nullable=False),  # cache: credits consumed from this grant
    Column("voided_us", BigInteger, nullable=True),
    Column("expired_us", BigInteger, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
    UniqueConstraint("environment", "grant_id"),
    CheckConstraint("amount > 0", name="grant_amount_positive"),
    Index("ix_ledger_grants_wallet", "wallet_id"),
    Index("ix_ledger_grants_customer", "environment", "customer_id", "seq"),
    Index("ix_ledger_grants_due", "expire_us"),
)

transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", _ID, primary_key=True),  # at most one transfer per id
    Column("environment", _NAME, nullable=False),
    Column("wallet_id", _ID, nullable=False),
    Column("debit_account_id", _ID, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("credit_account_id", _ID, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("kind", String(24), nullable=False),
    Column("ref", _NAME, nullable=False),  # grant id, idempotency key or reservation id
    Column("grant_id", _NAME, nullable=True),  # the grant whose credits moved
    Column("timestamp_us", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="transfer_amount_positive"),
    CheckConstraint("debit_account_id <> credit_account_id", name="transfer_distinct_accounts"),
)

consumptions = Table(
    "ledger_consumptions",
    metadata,
    Column("environment", _NAME, primary_key=True),
    Column("customer_id", _NAME, primary_key=True),
    Column("idempotency_key", _NAME, primary_key=True),
    Column("wallet_id", _ID, nullable=False),
    Column("currency_id", _NAME, nullable=False),
    Column("resource_id", _NAME, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("entries", Text, nullable=False),  # JSON [[grant_id, units], ...] in draw order
    Column("feature_id", _NAME, nullable=True),
    Column("dimensions", Text, nullable=True),
    Column("timestamp_us", BigInteger, nullable=False),
    Column("recorded_us", BigInteger, nullable=False),
)

reservations = Table(
    "ledger_reservations",
    metadata,
    Column("environment", _NAME, primary_key=True),
    Column("reservation_id", _NAME, primary_key=True),
    Column("wallet_id", _ID, nullable=False),
    Column("customer_id", _NAME, nullable=False),
    Column("currency_id", _NAME, nullable=False),
    Column("resource_id", _NAME, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("parts", Text, nullable=False),  # JSON [[grant_id, units], ...] held, in draw order
    Column("status", String(16), nullable=False),  # ACTIVE | RELEASED | EXPIRED
    Column("consumed", BigInteger, nullable=True),
    Column("feature_id", _NAME, nullable=True),
    Column("metadata", Text, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("resolved_us", BigInteger, nullable=True),
    Index("ix_ledger_reservations_due", "status", "expires_us"),
    Index("ix_ledger_reservations_wallet", "wallet_id", "status", "expires_us"),
)

ledger_events = Table(
    "ledger_events",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),  # the listing's cursor
    Column("event_id", _ID, nullable=False, unique=True),
    Column("environment", _NAME, nullable=False),
    Column("wallet_id", _ID, nullable=False),
    Column("customer_id", _NAME, nullable=False),
    Column("currency_id", _NAME, nullable=False),
    Column("resource_id", _NAME, nullable=False),
    Column("grant_id", _NAME, nullable=False),
    Column("event_type", String(48), nullable=False),
    Column("amount", BigInteger, nullable=False),  # signed: net effect on the grant balances
    Column("reservation_id", _NAME, nullable=True),
    Column("feature_id", _NAME, nullable=True),
    Column("hold_returned", BigInteger, nullable=True),
    Column("breakdown", Text, nullable=True),  # JSON list of per-grant items
    Column("metadata", Text, nullable=True),
    Column("timestamp_us", BigInteger, nullable=False),
    Index("ix_ledger_events_customer", "environment", "customer_id", "seq"),
)

APPEND_ONLY = (transfers.name, consumptions.name, ledger_events.name)


def _sqlite_triggers() -> list[str]:
    statements = []
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} "
                f"BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
            )
    return statements


def _postgres_triggers() -> list[str]:
    statements = [
        "CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        # '%%' because the driver sees pyformat placeholders: plpgsql receives a single '%'.
        "BEGIN RAISE EXCEPTION '%% is append-only: %% refused', TG_TABLE_NAME, TG_OP; END $$"
    ]
    for table in APPEND_ONLY:
        statements.append(
            f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
        )
        # TRUNCATE bypasses row triggers; refuse it too.
        statements.append(
            f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
        )
    return statements


def create_schema(conn: Connection) -> None:
    """Create tables and triggers if absent (idempotent; safe to run from several instances)."""
    if conn.dialect.name == "postgresql":
        # Serialise concurrent schema creation by several instances.
        conn.execute(text("SELECT pg_advisory_xact_lock(7205521)"))
    metadata.create_all(conn, checkfirst=True)
    triggers = _postgres_triggers() if conn.dialect.name == "postgresql" else _sqlite_triggers()
    for statement in triggers:
        conn.exec_driver_sql(statement)
