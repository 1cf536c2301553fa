"""The usage-event model shared by ingestion, the stream processor and the Flink job.

Kafka record format (schema version 1), topic ``usage.events`` and ``usage.deduped``:
one record holds events of ONE environment from one request, so a batch of 1000 events costs
a handful of records instead of 1000 (per-record cost dominates here; see
docs/benchmarks-ingest.md). A customer's events always go to the partition of the key
``"{environment}/{customer_id}"`` (librdkafka's default partitioner: CRC-32 of the key modulo
the partition count), so one customer's events stay in order on one partition. A record holds
either one customer's events, keyed by that key (gRPC ReportEvents, usage.deduped), or -- the
REST/GraphQL ingestion, measured faster -- the events of every customer of the request that
share a partition, produced to that partition explicitly and keyed by its first customer's
key: consumers must route by each event's ``customerId``, never by the record key. Record
value: JSON of :class:`EventBatch`. The Kafka record timestamp is the RECEIVE time, never the
event time, so log retention cannot drop back-dated events (openmeter #5005).

With ``stream.engine = "flink"`` there is no ``usage.deduped``: the deduplicated events are the
Flink job's rows on ``<flink.sink_topic_prefix>usage_events`` (one JSON row per message),
which :func:`decode_event_row` turns into the same :class:`UsageEvent` values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, TypeVar

import msgspec

SCHEMA_VERSION = 1

# A record's integers must fit 64 bits: a bigger one (a raw producer's 10**400) decoded as a
# Python int and raised OverflowError half-way through a record in the stream engine, after
# it had counted the record's first events. Refused at decoding, the record is dead-lettered
# whole, as a float beyond range (1e400) already was.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
DimensionValue = str | float | Int64 | bool


class UsageEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One raw usage event as accepted by the runtime API (camelCase fields as on the wire)."""

    customerId: str
    eventName: str
    idempotencyKey: str
    timestamp: int  # event time, epoch milliseconds UTC
    resourceId: str | None = None
    dimensions: dict[str, DimensionValue] = {}


class EventBatch(msgspec.Struct, frozen=True, omit_defaults=True):
    """The value of one Kafka record: events of one environment (see the module docstring)."""

    v: int
    environment: str
    receivedAt: int  # receive time, epoch milliseconds UTC (also the record timestamp)
    events: list[UsageEvent]


_batch_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(EventBatch)


def encode_batch(batch: EventBatch) -> bytes:
    return _batch_encoder.encode(batch)


def decode_batch(data: bytes) -> EventBatch:
    """Decode a record value; any undecodable value raises msgspec.DecodeError."""
    try:
        return _batch_decoder.decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:  # invalid UTF-8, absurd nesting
        raise msgspec.DecodeError(f"undecodable record: {type(exc).__name__}") from exc


class EventRowValue(msgspec.Struct, frozen=True):
    """One row of the Flink job's deduplicated-events topic ``<flink.sink_topic_prefix>
    usage_events`` (streaming/flink/usage_job.py: JSON, one row per message, times as epoch
    ms). Its ``labels``/``values`` maps are left out: they are derived from ``dimensions``
    and have lost the types (a boolean is the label "true", an int the value 3.0)."""

    environment: str
    customer_id: str
    resource_id: str  # '' when the event has none
    event_name: str
    idempotency_key: str
    event_time: int
    ingest_time: int
    dimensions: str  # the event's own dimensions JSON text, keys sorted


_row_decoder = msgspec.json.Decoder(EventRowValue)
_dimensions_decoder = msgspec.json.Decoder(dict[str, DimensionValue])


def decode_event_row(data: bytes) -> tuple[str, UsageEvent]:
    """(environment, event) of one Flink ``usage_events`` row: the event exactly as
    :func:`decode_batch` gives it from the producer's record (dimensions decoded from the
    producer's own JSON text, so 3 stays int, 3.0 float and true bool; no resource is None).
    Any undecodable row raises msgspec.DecodeError or msgspec.ValidationError."""
    try:
        row = _row_decoder.decode(data)
        dimensions = _dimensions_decoder.decode(row.dimensions)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"undecodable row: {type(exc).__name__}") from exc
    event = UsageEvent(
        customerId=row.customer_id,
        eventName=row.event_name,
        idempotencyKey=row.idempotency_key,
        timestamp=row.event_time,
        resourceId=row.resource_id or None,
        dimensions=dimensions,
    )
    return row.environment, event


def record_key(environment: str, customer_id: str) -> bytes:
    return f"{environment}/{customer_id}".encode()


# Half of librdkafka's (and the brokers') default message.max.bytes of 1 MB: room for headers
# and a broker configured a little lower.
MAX_RECORD_BYTES = 512 * 1024

Item = TypeVar("Item")


class ItemTooLarge(ValueError):
    """One item alone encodes to more than a record may hold: no split can carry it (the
    broker would refuse it on every retry), so the request is the client's to fix."""

    def __init__(self, item: object, size: int) -> None:
        super().__init__(f"one item is {size} bytes encoded (at most {MAX_RECORD_BYTES})")
        self.item = item
        self.size = size


def split_records(
    items: list[Item], encode: Callable[[list[Item]], bytes], limit: int = MAX_RECORD_BYTES
) -> list[tuple[list[Item], bytes]]:
    """``items`` as consecutive groups, in order, each with its encoded record of at most
    ``limit`` bytes: one group when it fits (one encoding), else halves, recursively.
    Raises :class:`ItemTooLarge` for an item that does not fit alone."""
    value = encode(items)
    if len(value) <= limit:
        return [(items, value)]
    if len(items) == 1:
        raise ItemTooLarge(items[0], len(value))
    half = len(items) // 2
    return split_records(items[:half], encode, limit) + split_records(items[half:], encode, limit)


def dedup_key(environment: str, customer_id: str, idempotency_key: str) -> str:
    """The exactly-once identity of an event (DESIGN.md invariant 2)."""
    return f"{environment}\x1f{customer_id}\x1f{idempotency_key}"


def split_dimensions(
    dimensions: dict[str, DimensionValue],
) -> tuple[dict[str, str], dict[str, float]]:
    """Split dimensions into labels (the dimension set) and numeric values (summed).

    Strings and booleans are labels (booleans as "true"/"false"); ints and floats are values.
    Both the Python engine and the Flink job use this rule, so their rows agree.
    """
    labels: dict[str, str] = {}
    values: dict[str, float] = {}
    for name, value in dimensions.items():
        if isinstance(value, bool):
            labels[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            values[name] = float(value)
        else:
            labels[name] = value
    return labels, values


def labels_key(labels: dict[str, str]) -> str:
    """Canonical text of a dimension set: sorted, JSON, so equal sets give equal keys."""
    return msgspec.json.encode(dict(sorted(labels.items()))).decode()


def is_finite_number(value: float) -> bool:
    return math.isfinite(value)


# Bounds every ingestion path (REST, GraphQL, gRPC) applies before an event is durable.
# Numeric dimensions are summed as floats by the stream engines and the usage counters: with
# Stigg's bound for usage values (whole numbers up to 2^53 - 1) no sum can overflow, where two
# values near 1.7e308 made +inf, and inf + -inf a NULL counter that blocked the consumer.
MAX_DIMENSION_VALUE = 2.0**53 - 1


def dimension_value_problem(value: object) -> str | None:
    """Why a numeric dimension value cannot be accepted (None when it can, or not numeric)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if not -MAX_DIMENSION_VALUE <= value <= MAX_DIMENSION_VALUE:
        return f"is out of range (at most {MAX_DIMENSION_VALUE:.0f} in absolute value)"
    return None


# Stigg's limits for aggregated usage values (the REST SDK's docstring of `value`), applied by
# every path that reports usage (REST /api/v2/usage, GraphQL ReportUsage, gRPC ReportUsage).
MAX_FRACTIONAL_USAGE = 2.0**35
MAX_WHOLE_USAGE = 2.0**53 - 1


def usage_value_problem(value: float) -> str | None:
    """Why a reported usage value cannot be accepted (None when it can)."""
    if not math.isfinite(value):
        return "must be finite"
    if value.is_integer():
        return "exceeds ±(2^53-1)" if abs(value) > MAX_WHOLE_USAGE else None
    if abs(value) >= MAX_FRACTIONAL_USAGE:
        return "must be below 2^35 in magnitude when fractional"
    return None


def round_usage_value(value: float) -> float:
    """Stigg's rule for an accepted value: half away from zero to 5 decimal places."""
    if value.is_integer():
        return value
    return float(Decimal(repr(value)).quantize(Decimal("0.00001"), rounding=ROUND_HALF_UP))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def epoch_ms(value: datetime) -> int:
    """Exact epoch milliseconds (naive datetimes are UTC): float seconds * 1000 can be 1 ms off."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_MS


# The first hour the platform rolls up, archives and retains (the Dagster partitions start
# there): an earlier event would be stored but never billed, and its day never archived.
# It also keeps event times within usage_minute's DateTime (unsigned seconds since 1970).
FIRST_EVENT_TIME = datetime(2025, 1, 1, tzinfo=UTC)
MIN_EVENT_TIME_MS = epoch_ms(FIRST_EVENT_TIME)
BEFORE_FIRST_HOUR = "is before 2025-01-01T00:00:00Z, the first hour the platform rolls up"


def event_time_problem(time_ms: int, now_ms: int, max_future_ms: int) -> str | None:
    """Why an event time (epoch ms) cannot be accepted (None when it can)."""
    if time_ms < MIN_EVENT_TIME_MS:
        return BEFORE_FIRST_HOUR
    if time_ms > now_ms + max_future_ms:
        return f"is more than {max_future_ms / 1000:g}s in the future"
    return None


# --- Aggregated usage (topic ``usage.reports``) -------------------------------------------
#
# REST ``/api/v2/usage`` and GraphQL ``ReportUsage``/``ReportUsageBulk`` carry aggregated usage
# (a value per customer and feature, DELTA or SET), not raw events. They are logged durably
# before the answer, in their own topic so consumers of ``usage.events`` see one record type.
# Same partitioning, key and timestamp rules as EventBatch (one record per partition per request).


class UsageReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """One aggregated usage report (camelCase fields as on the wire)."""

    id: str  # measurement id answered to the caller (stable for a given idempotency key)
    customerId: str
    featureId: str
    value: float  # rounded half away from zero to 5 decimal places, as Stigg does
    updateBehavior: str  # "DELTA" | "SET"
    createdAt: int  # epoch milliseconds UTC (the caller's createdAt, else receive time)
    idempotencyKey: str | None = None
    resourceId: str | None = None
    dimensions: dict[str, DimensionValue] = {}


class UsageReportBatch(msgspec.Struct, frozen=True, omit_defaults=True):
    """The value of one ``usage.reports`` record: reports of one environment (as EventBatch)."""

    v: int
    environment: str
    receivedAt: int
    usages: list[UsageReport]


_report_decoder = msgspec.json.Decoder(UsageReportBatch)


def encode_report_batch(batch: UsageReportBatch) -> bytes:
    return _batch_encoder.encode(batch)


def decode_report_batch(data: bytes) -> UsageReportBatch:
    """Decode a record value; any undecodable value raises msgspec.DecodeError (as
    :func:`decode_batch`: its consumers skip those, and a raw UnicodeDecodeError stopped them)."""
    try:
        return _report_decoder.decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:  # invalid UTF-8, absurd nesting
        raise msgspec.DecodeError(f"undecodable record: {type(exc).__name__}") from exc
