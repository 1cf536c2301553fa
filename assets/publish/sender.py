"""Sending ledger entries as ReportUsageBulk through Stigg's official GraphQL client.

Bulks hold at most ``publish_bulk_size`` usages (Stigg's limit: 100) of ONE environment.
Transient failures (connection errors, timeouts, HTTP 5xx/429) are retried with exponential
backoff; re-sending is safe because every usage carries its idempotency key. A GraphQL error
that refuses a usage itself (CustomerNotFound, FeatureNotFound, BadUserInput, ...) refuses a
whole bulk: its usages are then sent one by one, and the refused ones are reported while the
others go through. Any other GraphQL error (INTERNAL_SERVER_ERROR, RateLimitExceeded, an
unknown code) is the control plane's own trouble, answered as HTTP 200 + ``errors``: it is
retried like a transport error, and raised when the retries run out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import httpx
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from assets.publish.ledger import Entry

log = logging.getLogger(__name__)


@dataclass
class SendResult:
    sent: list[Entry] = field(default_factory=list)
    bulks: int = 0
    rejected: list[tuple[Entry, str]] = field(default_factory=list)  # (entry, error)


def bulks(entries: Iterable[Entry], size: int) -> list[list[Entry]]:
    """Bulks of <= size entries, each of one environment, in a stable order."""
    ordered = sorted(entries, key=lambda e: (e.environment, e.idempotency_key))
    out: list[list[Entry]] = []
    for _, group in groupby(ordered, key=lambda e: e.environment):
        items = list(group)
        out.extend(items[i : i + size] for i in range(0, len(items), size))
    return out


# Stigg's error codes that refuse a usage for what it says (its customer, feature, resource
# or value): sending it again cannot succeed until the catalog or the usage changes.
REFUSAL_CODES = frozenset(
    {
        "BadUserInput",
        "CustomerNotFound",
        "CustomerResourceNotFound",
        "FeatureNotFound",
        "InvalidArgumentError",
        "EntitlementUsageOutOfRangeError",
        "UsageMeasurementDiffOutOfRangeError",
        "CannotReportUsageForEntitlementWithMeterError",
        "MeteringNotAvailableForFeatureType",
        "UnsupportedFeatureType",
        "NoFeatureEntitlementError",
        "NoFeatureEntitlementInSubscription",
    }
)


def error_codes(exc: Any) -> list[str]:
    """The ``extensions.code`` of each error of a GraphQL error response ("" when absent)."""
    return [str((e.extensions or {}).get("code", "")) for e in exc.errors]


def is_refusal(exc: BaseException) -> bool:
    """A GraphQL error refusing usages themselves (not a failure of the control plane)."""
    from stigg.generated.exceptions import GraphQLClientGraphQLMultiError

    return isinstance(exc, GraphQLClientGraphQLMultiError) and any(
        code in REFUSAL_CODES for code in error_codes(exc)
    )


def _transient(exc: BaseException) -> bool:
    from stigg.generated.exceptions import (
        GraphQLClientGraphQLMultiError,
        GraphQLClientHttpError,
        GraphQLClientInvalidResponseError,
    )

    if isinstance(exc, httpx.TransportError | GraphQLClientInvalidResponseError):
        return True
    if isinstance(exc, GraphQLClientGraphQLMultiError):
        return not is_refusal(exc)
    if isinstance(exc, GraphQLClientHttpError):
        return exc.status_code >= 500 or exc.status_code == 429
    return False


def _bulk_input(entries: list[Entry]) -> Any:
    from stigg.generated.enums import UsageUpdateBehavior
    from stigg.generated.input_types import ReportUsageBaseInput, ReportUsageBulkInput

    return ReportUsageBulkInput(
        environmentId=entries[0].environment,
        usages=[
            ReportUsageBaseInput(
                customerId=e.customer_id,
                featureId=e.feature_id,
                resourceId=e.resource_id or None,
                value=e.delta,
                updateBehavior=UsageUpdateBehavior.SET
                if e.behavior == "SET"
                else UsageUpdateBehavior.DELTA,
                idempotencyKey=e.idempotency_key,
                # The hour the usage belongs to, not the time it was published.
                createdAt=e.hour.isoformat().replace("+00:00", "Z"),
            )
            for e in entries
        ],
    )


def send(
    client: Any,
    entries: list[Entry],
    bulk_size: int,
    on_sent: Callable[[list[Entry]], None],
    attempts: int = 6,
    max_wait_s: float = 30.0,
) -> SendResult:
    """Send every entry; ``on_sent`` runs after each acknowledged bulk (to mark the ledger)."""
    from stigg.generated.exceptions import GraphQLClientGraphQLMultiError

    result = SendResult()
    pending = bulks(entries, bulk_size)
    while pending:
        bulk = pending.pop(0)
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.5, max=max_wait_s),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "ReportUsageBulk failed (attempt %d), retrying: %s",
                state.attempt_number,
                state.outcome.exception() if state.outcome else "",
            ),
        )
        try:
            response = retrying(client.report_usage_bulk, _bulk_input(bulk))
        except GraphQLClientGraphQLMultiError as exc:
            if not is_refusal(exc):
                raise  # still failing after the retries: the step fails (and is retried)
            if len(bulk) > 1:
                # A bulk is accepted or refused whole: isolate the refused usages one by one
                # so that one unknown customer does not hold back everyone else's usage.
                log.warning("bulk of %d refused (%s); sending one by one", len(bulk), exc)
                pending[:0] = [[e] for e in bulk]
                continue
            result.rejected.append((bulk[0], str(exc)))
            log.error("control plane refused %s: %s", bulk[0].idempotency_key, exc)
            continue
        acknowledged = len(response.report_usage_bulk)
        if acknowledged != len(bulk):
            raise RuntimeError(
                f"control plane acknowledged {acknowledged} of {len(bulk)} usages in a bulk"
            )
        on_sent(bulk)
        result.sent.extend(bulk)
        result.bulks += 1
    return result
