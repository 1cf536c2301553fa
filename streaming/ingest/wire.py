"""Decoding and validation of the ingestion request bodies (REST and GraphQL inputs).

msgspec decodes and validates in one C pass; its errors already name the path
(``$.events[3].customerId``), which is what a 422 must name. Everything here raises
:class:`~byoc_platform.api_errors.ApiError` with the status the contract asks for:

- malformed JSON -> 400; more than ``max_events`` items -> 413; a missing, ill-typed or
  unknown field, an empty batch, a timestamp too far in the future or before 2025 (the first
  hour rolled up), or a numeric dimension beyond 2^53 - 1 -> 422 naming the index and field.

Unknown fields are refused (REST as GraphQL): every field the official SDKs send is known
(stigg-api.md), and a misspelt optional field (``idempotencykey``, ``resource_id``) would
otherwise be dropped silently.

Raw events are decoded into :class:`WireEvent`, whose fields are laid out exactly like
:class:`byoc_platform.events.UsageEvent` (same names, order and defaults); the decoder then
replaces each datetime by epoch milliseconds in place, so the structs encode straight into
the Kafka record format with no per-event copy (the per-event Python cost is the budget at
100k events/s).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from byoc_platform.api_errors import ApiError
from byoc_platform.events import (
    MAX_DIMENSION_VALUE,
    dimension_value_problem,
    epoch_ms,
    event_time_problem,
    round_usage_value,
    usage_value_problem,
)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Dimensions = dict[str, str | int | float | bool]


class WireEvent(msgspec.Struct, omit_defaults=True, gc=False, forbid_unknown_fields=True):
    """One raw event as sent; after decoding ``timestamp`` holds epoch milliseconds (int)."""

    customerId: NonEmpty
    eventName: NonEmpty
    idempotencyKey: NonEmpty
    # RFC 3339 on the wire; `stamp_events` replaces it by epoch ms (an int) in place.
    timestamp: datetime | None = None
    resourceId: NonEmpty | None = None
    dimensions: Dimensions = {}


class EventsBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /api/v1/events``."""

    events: list[WireEvent]


class UsageIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One aggregated usage report (REST ``usages[i]``, GraphQL ``ReportUsageBaseInput``)."""

    customerId: NonEmpty
    featureId: NonEmpty
    value: float
    updateBehavior: Literal["DELTA", "SET"] = "DELTA"
    idempotencyKey: NonEmpty | None = None
    resourceId: NonEmpty | None = None
    dimensions: Dimensions | None = None
    createdAt: datetime | None = None


class UsageBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /api/v2/usage``."""

    usages: list[UsageIn]


# GraphQL inputs (stigg-api-client-v2's input_types.py): strict like a GraphQL schema.
class GqlEvent(WireEvent, forbid_unknown_fields=True, omit_defaults=True):
    pass


class GqlEventsInput(msgspec.Struct, forbid_unknown_fields=True):
    usageEvents: list[GqlEvent]
    environmentId: NonEmpty | None = None


class GqlUsage(UsageIn, kw_only=True, forbid_unknown_fields=True):
    pass


class GqlUsageInput(UsageIn, kw_only=True, forbid_unknown_fields=True):
    environmentId: NonEmpty | None = None


class GqlUsageBulkInput(msgspec.Struct, forbid_unknown_fields=True):
    usages: list[GqlUsage]
    environmentId: NonEmpty | None = None


_events_decoder = msgspec.json.Decoder(EventsBody)
_usage_decoder = msgspec.json.Decoder(UsageBody)


class Rejected(ApiError):
    """An ApiError with the rejection reason counted in ``byoc_ingest_rejections_total``."""

    def __init__(self, status: int, message: str, reason: str, **kwargs: Any) -> None:
        super().__init__(status, message, **kwargs)
        self.reason = reason


def _invalid(message: str, path_root: str = "$") -> ApiError:
    # msgspec says `$.events[3].customerId`; keep its wording, it names index and field.
    text = message if path_root == "$" else message.replace("`$", f"`{path_root}")
    return Rejected(422, f"Invalid request: {text}", "invalid", retryable=False)


def decode_json(body: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    """Decode and validate; 400 when the body is not JSON at all, 422 when ill-typed."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        problem = str(exc)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _malformed(exc) from None
    # msgspec validates while it parses, so a truncated document can surface as a type error
    # first; re-parse without a schema to tell malformed JSON (400) apart.
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _malformed(exc) from None
    raise _invalid(problem)


def _malformed(exc: Exception) -> Rejected:
    # Invalid UTF-8 and absurd nesting surface as Python errors, not DecodeError.
    detail = exc if isinstance(exc, msgspec.DecodeError) else type(exc).__name__
    return Rejected(400, f"Malformed JSON: {detail}", "malformed", retryable=False)


def check_count(count: int, max_items: int, what: str) -> None:
    if count > max_items:
        raise Rejected(
            413,
            f"Too many {what}: {count} (at most {max_items} per request)",
            "too_many_items",
            retryable=False,
        )
    if count == 0:
        raise Rejected(
            422, f"Invalid request: at least one item is required in `{what}`", "invalid"
        )


def empty_dimension_name(where: str) -> Rejected:
    # The stream engines keep a minute's event count as the metric named "" (windows.py): a
    # dimension "" overwrote it.
    message = f"Invalid request: a dimension name is empty - at `{where}`"
    return Rejected(422, message, "invalid", retryable=False)


def stamp_events(
    events: list[Any], now_ms: int, max_future_ms: int, path: str = "$.events"
) -> list[WireEvent]:
    """Replace each event's datetime by epoch ms (receive time when absent); 422 when a
    numeric dimension or the time is out of the bounds of byoc_platform.events."""
    for index, event in enumerate(events):
        if "" in event.dimensions:  # one lookup per event (a key constraint cost 12% here)
            raise empty_dimension_name(f"{path}[{index}].dimensions")
        for name, value in event.dimensions.items():
            # Refused here, before it is durable: the stream engines and the usage counters
            # sum numeric dimensions as floats. The comparison alone (false for nan and inf,
            # true for booleans) keeps the per-event cost; the helper words the refusal.
            if type(value) is str or -MAX_DIMENSION_VALUE <= value <= MAX_DIMENSION_VALUE:
                continue
            problem = dimension_value_problem(value)
            if problem is not None:
                raise Rejected(
                    422,
                    f"Invalid request: number {problem} - at `{path}[{index}].dimensions.{name}`",
                    "invalid",
                    retryable=False,
                )
        ts = event.timestamp
        if ts is None:
            event.timestamp = now_ms
            continue
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        ms = epoch_ms(ts)
        problem = event_time_problem(ms, now_ms, max_future_ms)
        if problem is not None:
            raise Rejected(
                422,
                f"Invalid request: timestamp {ts.isoformat()} {problem} - at "
                f"`{path}[{index}].timestamp`",
                "future_timestamp" if ms > now_ms else "invalid",
                retryable=False,
            )
        event.timestamp = ms
    return events


def decode_events(
    body: bytes, *, max_events: int, now_ms: int, max_future_ms: int
) -> list[WireEvent]:
    """The validated events of a ``POST /api/v1/events`` body."""
    events = decode_json(body, _events_decoder).events
    check_count(len(events), max_events, "events")
    return stamp_events(events, now_ms, max_future_ms)


def round_value(value: float, where: str) -> float:
    """Stigg's rule: half away from zero to 5 places; fractional |v| < 2^35, whole <= 2^53-1."""
    problem = usage_value_problem(value)
    if problem is not None:
        raise Rejected(422, f"Invalid request: value {problem} - at `{where}.value`", "invalid")
    return round_usage_value(value)


def decode_usages(body: bytes, *, max_usages: int) -> list[UsageIn]:
    """The validated usages of a ``POST /api/v2/usage`` body."""
    usages = decode_json(body, _usage_decoder).usages
    check_count(len(usages), max_usages, "usages")
    return usages


def convert(data: Any, cls: type[Any], root: str) -> Any:
    """GraphQL variables (already parsed) into an input struct; 422 names ``input...``."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), root) from None
