"""The ledger's exceptions: each names what went wrong and maps to one HTTP status."""

from __future__ import annotations

from decimal import Decimal


class LedgerError(Exception):
    """Base of every refusal the ledger reports to a caller."""

    http_status = 400
    code = "LEDGER_ERROR"

    def to_api(self) -> dict[str, dict[str, str]]:
        """The ``{"error":{"code","message"}}`` body the REST contract uses."""
        return {"error": {"code": self.code, "message": str(self)}}


class InvalidInput(LedgerError):
    """A malformed argument (bad time, bad id, bad cursor, bad TTL...)."""

    http_status = 400
    code = "INVALID_INPUT"


class InvalidAmount(InvalidInput):
    """An amount that is not a finite number in (0, MAX_AMOUNT] after rounding to 5 places."""

    code = "INVALID_AMOUNT"


class InsufficientCredits(LedgerError):
    """Refused: the operation would take a balance below zero. Nothing was written."""

    http_status = 400
    code = "INSUFFICIENT_CREDITS"

    def __init__(self, message: str, *, available: Decimal, requested: Decimal) -> None:
        super().__init__(message)
        self.available = available
        self.requested = requested

    def __reduce__(self) -> tuple[object, ...]:  # picklable (the writer process sends it)
        extra = {"available": self.available, "requested": self.requested}
        return _rebuild, (type(self), str(self), extra)


class IdempotencyConflict(LedgerError):
    """The same idempotency key / reservation id / grant id was reused with other values."""

    http_status = 409
    code = "IDEMPOTENCY_CONFLICT"


class NotFound(LedgerError):
    """No such grant or reservation in this environment."""

    http_status = 404
    code = "NOT_FOUND"


class ReservationAlreadyResolved(LedgerError):
    """A reservation resolves once: it was already released or it expired."""

    http_status = 409
    code = "RESERVATION_ALREADY_RESOLVED"

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (type(self), str(self), {"status": self.status})


class LedgerUnavailable(LedgerError):
    """The ledger could not answer (its writer process stopped, the database failed): the
    operation may or may not have been applied; a retry with the same idempotency key is
    safe."""

    http_status = 503
    code = "LEDGER_UNAVAILABLE"


class InvariantViolation(LedgerError):
    """``check_invariants`` found the books inconsistent (a bug or tampering, never input)."""

    http_status = 500
    code = "LEDGER_INVARIANT_VIOLATION"


def _rebuild(cls: type[LedgerError], message: str, extra: dict[str, object]) -> LedgerError:
    return cls(message, **extra)  # type: ignore[call-arg]
