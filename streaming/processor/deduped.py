"""The deduplicated events, published to ``usage.deduped`` for the enforcement counters.

Record format: byoc_platform/events.py (EventBatch JSON, key ``environment/customer``, record
timestamp = receive time). One output record per input record that kept at least one event,
holding its surviving events in order. An input record whose events all survived (the common
case) is republished byte for byte; otherwise the survivors are re-encoded from the engine's
rows, the dimensions copied as the engine's canonical JSON (``msgspec.Raw``), nothing decoded.

Delivery is AT-LEAST-ONCE across crashes: records are acknowledged (acks=all) before the
checkpoint that covers them commits, and a crash between the two republishes them on replay.
Consumers must count each (environment, customer, idempotencyKey) once; the enforcement
counters do (enforcement/usage_feed.py: ``apply_events`` is idempotent per event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import KafkaException

from byoc_platform.clients import acknowledged, producer_unusable
from byoc_platform.events import SCHEMA_VERSION, record_key
from streaming.engine import EventRow
from streaming.processor.errors import Aborted

log = logging.getLogger(__name__)


class _Event(msgspec.Struct, omit_defaults=True):
    customerId: str
    eventName: str
    idempotencyKey: str
    timestamp: int
    resourceId: str | None = None
    dimensions: msgspec.Raw = msgspec.Raw(b"{}")


class _Batch(msgspec.Struct):
    v: int
    environment: str
    receivedAt: int
    events: list[_Event]


_encode = msgspec.json.Encoder().encode

Record = tuple[bytes, bytes, int]  # (key, value, timestamp ms)


@dataclass(frozen=True)
class Accepted:
    """What one input record contributed to the output: ``count`` deduplicated events, and its
    original bytes when all of its events survived (then they are republished as they are)."""

    key: bytes
    value: bytes | None
    timestamp: int
    count: int


def records_for(accepted: Sequence[Accepted], rows: Sequence[EventRow]) -> list[Record]:
    """Output records of a flush: ``rows`` are its deduplicated events in processing order."""
    records: list[Record] = []
    i = 0
    for item in accepted:
        if item.value is not None:
            records.append((item.key, item.value, item.timestamp))
        else:
            records.extend(deduped_records(rows[i : i + item.count]))
        i += item.count
    if i != len(rows):
        raise AssertionError(f"accepted counts cover {i} events, the flush has {len(rows)}")
    return records


def deduped_records(rows: Iterable[EventRow]) -> list[Record]:
    """Group consecutive rows of one input record (same environment, customer, receive time)."""
    records: list[Record] = []
    current: tuple[str, str, int] | None = None
    events: list[_Event] = []

    def close() -> None:
        if current is not None and events:
            environment, customer, received_at = current
            value = _encode(_Batch(SCHEMA_VERSION, environment, received_at, events))
            records.append((record_key(environment, customer), value, received_at))

    for row in rows:
        group = (row.environment, row.customer_id, row.ingest_time)
        if group != current:
            close()
            current, events = group, []
        events.append(
            _Event(
                row.customer_id,
                row.event_name,
                row.idempotency_key,
                row.event_time,
                row.resource_id or None,
                msgspec.Raw(row.dimensions.encode()),
            )
        )
    close()
    return records


class DedupedPublisher:
    """Produces records and waits for every acknowledgement, retrying failed ones."""

    def __init__(
        self,
        producer_factory: Callable[[], Any],
        topic: str,
        abort: threading.Event,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self._producer_factory = producer_factory
        self._producer: Any = None
        self.topic = topic
        self._abort = abort
        self._flush_timeout_s = flush_timeout_s
        self._failed: list[Record] = []
        self._broken = False  # the producer hit a fatal error (e.g. the broker lost its state)

    def _get(self) -> Any:
        if self._producer is not None and self._broken:
            log.warning("replacing the usage.deduped producer after a fatal error")
            old, self._producer = self._producer, None
            old.purge()  # every record still outstanding fails into _failed, to be resent
            old.flush(5)
        if self._producer is None:
            self._producer = self._producer_factory()
            self._broken = False
        return self._producer

    def send(self, records: Sequence[Record]) -> None:
        """Start producing (asynchronous); :meth:`wait` collects the acknowledgements."""
        producer = self._get()
        for record in records:
            key, value, timestamp = record
            while True:
                try:
                    producer.produce(
                        self.topic,
                        value=value,
                        key=key,
                        timestamp=timestamp,
                        on_delivery=self._delivered(record),
                    )
                    break
                except BufferError:  # local queue full: serve callbacks and try again
                    producer.poll(0.05)
                except KafkaException as exc:  # fatal producer state: start a new session
                    if not exc.args[0].fatal():
                        raise
                    self._broken = True
                    producer = self._get()

    def _delivered(self, record: Record) -> Callable[[Any, Any], None]:
        def callback(err: Any, msg: Any) -> None:
            if not acknowledged(err, msg):  # an error, or "delivered" without an offset
                self._failed.append(record)
                if producer_unusable(err):  # fatal, or fenced after a broker restart
                    self._broken = True

        return callback

    def wait(self) -> None:
        """Block until every record sent so far is acknowledged; failed ones are resent."""
        producer = self._get()
        while True:
            remaining = producer.flush(self._flush_timeout_s)
            if remaining == 0 and not self._failed and not self._broken:
                return
            if self._abort.is_set():
                raise Aborted(f"publishing to {self.topic} abandoned ({remaining} unacknowledged)")
            if remaining and not self._broken:
                log.warning("%d records to %s still unacknowledged; waiting", remaining, self.topic)
                continue
            producer = self._get()  # a broken producer is replaced; its records fail over
            failed, self._failed = self._failed, []
            log.warning("%d records to %s failed; resending", len(failed), self.topic)
            self._abort.wait(0.5)
            self.send(failed)
            producer = self._get()
