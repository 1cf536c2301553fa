"""Exact amounts and times.

Amounts are stored as integers of 10^-5 credits ("units"): Stigg rounds to 5 decimal places,
and integers are exact on SQLite and PostgreSQL alike (SQLite has no exact NUMERIC). An
operation moves at most MAX_AMOUNT credits, and a wallet may issue at most WALLET_CAP credits in
total, so every balance and every per-account sum fits a signed 64-bit column.

Times are stored as integer microseconds since the Unix epoch (UTC): exact, sortable, and the
same on both engines.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from enforcement.ledger.errors import InvalidAmount, InvalidInput

DECIMALS = 5
SCALE = 10**DECIMALS
MAX_AMOUNT = Decimal(10**12)  # credits per operation
MAX_UNITS = int(MAX_AMOUNT) * SCALE
WALLET_CAP_UNITS = 9 * 10**18  # total ever granted into one wallet, < 2**63 - 1
_QUANTUM = Decimal(1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_units(value: object, field: str = "amount", *, allow_zero: bool = False) -> int:
    """Parse a caller's amount into units, refusing anything that is not a sane credit amount."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidAmount(f"{field} must be a number, got {type(value).__name__}")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise InvalidAmount(f"{field} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise InvalidAmount(f"{field} must be finite, got {value!r}")
    if number > MAX_AMOUNT:
        raise InvalidAmount(f"{field} must be at most {MAX_AMOUNT}, got {value!r}")
    units = int((number * SCALE).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN))
    if units < 0 or (units == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0 (at least 0.00001 after rounding to 5 places)"
        raise InvalidAmount(f"{field} must be {bound}, got {value!r}")
    return units


def to_decimal(units: int) -> Decimal:
    """Units back to an exact Decimal of credits."""
    return Decimal(units).scaleb(-DECIMALS)


def to_float(units: int) -> float:
    """Units as a JSON number (for the wire; exact for every amount below 2**53 units)."""
    return units / SCALE


def to_us(moment: datetime, field: str = "time") -> int:
    """An aware datetime to epoch microseconds (naive datetimes are refused, not guessed)."""
    if not isinstance(moment, datetime):
        raise InvalidInput(f"{field} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput(f"{field} must be timezone-aware (UTC), got naive {moment!r}")
    return (moment - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def parse_time(value: str | datetime | None, field: str) -> int | None:
    """An ISO-8601 string (no offset means UTC, as the catalog contract says) or a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_us(value, field)
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be an ISO-8601 time, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO-8601 time, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_us(moment, field)


def iso(us: int | None) -> str | None:
    """Epoch microseconds as ISO-8601 UTC with a ``Z`` (the wire format)."""
    if us is None:
        return None
    return from_us(us).isoformat().replace("+00:00", "Z")
