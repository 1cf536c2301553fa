"""Output rows of the engine, one struct per ClickHouse table of byoc_platform.warehouse_schema.

Field names and order are the table's column names and order. Times are epoch milliseconds
(UTC) as ints, the engine's exact clock. Rows are not tracked by the cyclic GC (gc=False: they
only hold strings, numbers and flat dicts, so they cannot form cycles); with millions of rows
in flight, GC passes otherwise cost ~40% of the engine's time. :func:`clickhouse_row`
converts times to the ``datetime`` values clickhouse-connect inserts into ``DateTime`` and
``DateTime64`` columns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec


class EventRow(msgspec.Struct, frozen=True, gc=False):
    """One deduplicated event: a row of ``usage_events``."""

    environment: str
    customer_id: str
    resource_id: str  # '' when the event has none
    event_name: str
    idempotency_key: str
    event_time: int  # ms
    ingest_time: int  # ms, the record's receivedAt
    labels: dict[str, str]
    values: dict[str, float]
    dimensions: str  # the original dimensions, compact JSON with sorted keys


class MinuteRow(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of one (window key, minute, metric, late_key): a row of ``usage_minute``.

    ``version`` is the row's ``count``: it grows with every event added to the row, so the
    newest snapshot wins under ReplacingMergeTree(version), and equal versions have equal
    content (same events in the same order), whoever wrote them and however often.
    """

    environment: str
    customer_id: str
    resource_id: str
    event_name: str
    dimensions_key: str  # byoc_platform.events.labels_key of the labels
    labels: dict[str, str]
    minute: int  # ms, window start
    metric: str  # '' for the event count, else a numeric dimension name
    late_key: str  # '' on time, else the late event's idempotency key
    count: int
    sum: float
    min: float
    max: float
    first_event_time: int  # ms
    last_event_time: int  # ms
    version: int


class LateHourRow(msgspec.Struct, frozen=True, gc=False):
    """An hour to be rolled up again: a row of ``late_hours``. Written for a late event, and for
    any event received after its hour ended (that hour's rollup may have run already)."""

    environment: str
    hour: int  # ms, floor of the late event's time to the hour
    # ms, receivedAt of the record that carried the late event; the warehouse stores the time
    # the row is written instead, never earlier (processor/warehouse_sink, warehouse_cluster)
    recorded_at: int


EVENT_COLUMNS: tuple[str, ...] = EventRow.__struct_fields__
MINUTE_COLUMNS: tuple[str, ...] = MinuteRow.__struct_fields__
LATE_HOUR_COLUMNS: tuple[str, ...] = LateHourRow.__struct_fields__

_MS_FIELDS = frozenset(
    {
        "event_time",
        "ingest_time",
        "minute",
        "first_event_time",
        "last_event_time",
        "hour",
        "recorded_at",
    }
)


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def clickhouse_row(row: EventRow | MinuteRow | LateHourRow) -> list[Any]:
    """The row's values in column order, times as aware UTC datetimes (for client.insert)."""
    return [
        _ms_to_datetime(value) if name in _MS_FIELDS else value
        for name, value in zip(row.__struct_fields__, msgspec.structs.astuple(row), strict=True)
    ]
