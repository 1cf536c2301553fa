"""Packing accepted events and usage reports into Kafka records (format: byoc_platform/events.py).

Chosen by measurement (docs/benchmarks-ingest.md): ONE record per (environment, partition)
per request. A customer's partition is the one librdkafka's default partitioner would give
its key ``"{environment}/{customer}"`` (CRC-32 of the key modulo the partition count), so
every record holding a customer's events lands on that customer's partition, and one
customer's events stay in order whichever ingestion path (REST, GraphQL, gRPC
ReportEvents producing per-customer keyed records) carried them. Inside a record, events
keep request order. The record key is ``"{environment}/{first customer of the record}"``
(informational: consumers route by each event's ``customerId``); the partition is explicit.

Measured on this machine with 1000-event batches over 100 customers: one record per event
~21k events/s, one per customer ~35-65k, one per partition ~82-89k, at the same CPU in the
API process: the cost is per record on the produce/ack path (librdkafka and the broker), so
fewer, larger records win.

A record never exceeds ``MAX_RECORD_BYTES`` (byoc_platform/events.py; librdkafka's default
``message.max.bytes`` is 1 MB): an oversized group is split into consecutive records for the
same partition, which stay in order (idempotent producer).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from byoc_platform.events import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    ItemTooLarge,
    UsageReport,
    UsageReportBatch,
    record_key,
    split_records,
)
from streaming.ingest.producer import Record
from streaming.ingest.wire import Rejected, WireEvent


class WireBatch(msgspec.Struct, omit_defaults=True):
    """Byte-for-byte the JSON of byoc_platform.events.EventBatch, over WireEvent."""

    v: int
    environment: str
    receivedAt: int
    events: list[WireEvent]


_encoder = msgspec.json.Encoder()


def partition_of(key: bytes, partitions: int) -> int:
    """librdkafka's default (consistent) partitioner for a non-empty key."""
    return zlib.crc32(key) % partitions


def group_by_partition(
    environment: str, items: Sequence[Any], partitions: int
) -> dict[int, list[Any]]:
    """Items per partition of their customer, each list in request order."""
    groups: dict[int, list[Any]] = {}
    cache: dict[str, int] = {}
    for item in items:
        customer = item.customerId
        partition = cache.get(customer)
        if partition is None:
            partition = cache[customer] = partition_of(
                record_key(environment, customer), partitions
            )
        group = groups.get(partition)
        if group is None:
            groups[partition] = [item]
        else:
            group.append(item)
    return groups


def _pack(
    topic: str,
    environment: str,
    partition: int,
    received_ms: int,
    items: list[Any],
    make: Callable[[list[Any]], Any],
) -> list[Record]:
    try:
        groups = split_records(items, lambda group: _encoder.encode(make(group)))
    except ItemTooLarge as exc:
        # One item alone over the limit: the broker would refuse it (a 503 the client would
        # retry forever). Nothing of the request is produced yet: refuse it as the client's.
        item = exc.item
        key_name = getattr(item, "idempotencyKey", None) or getattr(item, "id", "")
        raise Rejected(
            413,
            f"Item too large: the item of customer {item.customerId[:64]!r} with key "
            f"{str(key_name)[:64]!r} needs a record of {exc.size} bytes encoded, batch "
            f"envelope included (at most {MAX_RECORD_BYTES} per record)",
            "too_large",
            retryable=False,
        ) from None
    return [
        Record(topic, record_key(environment, group[0].customerId), value, received_ms, partition)
        for group, value in groups
    ]


def _records(
    topic: str,
    environment: str,
    received_ms: int,
    items: Sequence[Any],
    partitions: int,
    make: Callable[[list[Any]], Any],
) -> list[Record]:
    records: list[Record] = []
    for partition, group in group_by_partition(environment, items, partitions).items():
        records.extend(_pack(topic, environment, partition, received_ms, group, make))
    return records


def event_records(
    topic: str,
    environment: str,
    received_ms: int,
    events: Sequence[WireEvent],
    partitions: int,
) -> list[Record]:
    def make(items: list[Any]) -> WireBatch:
        return WireBatch(SCHEMA_VERSION, environment, received_ms, items)

    return _records(topic, environment, received_ms, events, partitions, make)


def report_records(
    topic: str,
    environment: str,
    received_ms: int,
    reports: Sequence[UsageReport],
    partitions: int,
) -> list[Record]:
    def make(items: list[Any]) -> UsageReportBatch:
        return UsageReportBatch(SCHEMA_VERSION, environment, received_ms, items)

    return _records(topic, environment, received_ms, reports, partitions, make)
