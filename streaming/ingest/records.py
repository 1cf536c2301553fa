"""Packing accepted events and usage reports into Kafka records (format: byoc_platform/events.py).

One record per (environment, customer) per request, keyed ``"{environment}/{customer}"``, so
murmur2 partitioning keeps a customer's events in order on one partition, and the record
timestamp is the receive time. Measured against one record per event in docs (see
docs/benchmarks-ingest.md): librdkafka's per-record cost dominates, so packing wins whenever a
batch holds more than one event per customer, and costs nothing when it does not.

A record never exceeds ``MAX_RECORD_BYTES`` (librdkafka's default ``message.max.bytes`` is
1 MB): one customer's oversized group is split into consecutive records with the same key,
which stay in order (same partition, idempotent producer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from byoc_platform.events import SCHEMA_VERSION, UsageReport, UsageReportBatch, record_key
from streaming.ingest.producer import Record
from streaming.ingest.wire import WireEvent

MAX_RECORD_BYTES = 512 * 1024


class WireBatch(msgspec.Struct, omit_defaults=True):
    """Byte-for-byte the JSON of byoc_platform.events.EventBatch, over WireEvent."""

    v: int
    environment: str
    receivedAt: int
    events: list[WireEvent]


_encoder = msgspec.json.Encoder()


def group_by_customer(items: Sequence[Any]) -> dict[str, list[Any]]:
    """Items per customerId, each list in request order (dicts keep first-seen order)."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        group = groups.get(item.customerId)
        if group is None:
            groups[item.customerId] = [item]
        else:
            group.append(item)
    return groups


def _pack(topic: str, key: bytes, received_ms: int, items: list[Any], make: Any) -> list[Record]:
    value = _encoder.encode(make(items))
    if len(value) <= MAX_RECORD_BYTES or len(items) == 1:
        return [Record(topic, key, value, received_ms)]
    half = len(items) // 2
    return _pack(topic, key, received_ms, items[:half], make) + _pack(
        topic, key, received_ms, items[half:], make
    )


def event_records(
    topic: str, environment: str, received_ms: int, events: Sequence[WireEvent]
) -> list[Record]:
    records: list[Record] = []
    for customer_id, group in group_by_customer(events).items():
        records.extend(
            _pack(
                topic,
                record_key(environment, customer_id),
                received_ms,
                group,
                lambda items: WireBatch(SCHEMA_VERSION, environment, received_ms, items),
            )
        )
    return records


def report_records(
    topic: str, environment: str, received_ms: int, reports: Sequence[UsageReport]
) -> list[Record]:
    records: list[Record] = []
    for customer_id, group in group_by_customer(reports).items():
        records.extend(
            _pack(
                topic,
                record_key(environment, customer_id),
                received_ms,
                group,
                lambda items: UsageReportBatch(SCHEMA_VERSION, environment, received_ms, items),
            )
        )
    return records
