"""A durable Kafka producer for asyncio: ``await send(records)`` returns only when the broker
acknowledged EVERY record with acks=all, or raises an ApiError (503/429) naming why.

librdkafka (confluent-kafka) does the batching, compression and retries in its own threads;
its delivery callbacks run in ONE dedicated poll thread here, and each request waits on a
single asyncio future that the last of its records' callbacks resolves (one cross-thread
wake-up per request, not per record).

Back-pressure: the bytes of accepted-but-unacknowledged records are capped
(``settings.api.producer_buffer_bytes``); a request that would exceed the cap is refused
with 429 + retry-after BEFORE any of its records is produced, so a refused batch never
reaches Kafka in part. librdkafka's own queue is sized above that cap; should it still raise
BufferError the request gets 429 as well (records produced before that may be delivered: a
client retry then yields duplicates, which the stream processor's dedup absorbs).

Failures: a delivery error (Tansu answers UNKNOWN_SERVER_ERROR while its S3 is down), a
timeout (``settings.api.produce_timeout_s``) or a fatal producer error all answer 503 with
retry-after; a fatal error also replaces the producer, because a fatal idempotent producer
refuses all further sends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from byoc_platform import clients
from byoc_platform.api_errors import ApiError
from byoc_platform.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0
POLL_INTERVAL_S = 0.05
LOG_INTERVAL_S = 10.0
NOT_PRODUCED = "not produced"


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int
    partition: int


class _Throttle(logging.Filter):
    """Lets one record per message kind through per interval (reconnect errors repeat)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = str(record.msg)[:40]
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            return False
        self._last[kind] = now
        return True


_librdkafka_log = logging.getLogger("streaming.ingest.librdkafka")
_librdkafka_log.addFilter(_Throttle(LOG_INTERVAL_S))


class _Waiter:
    """The outstanding records of one request; resolved once by the last callback."""

    __slots__ = ("bytes", "error", "future", "loop", "owner", "remaining")

    def __init__(
        self, owner: DurableProducer, loop: asyncio.AbstractEventLoop, count: int, size: int
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count
        self.bytes = size
        self.error: Any = None

    def on_delivery(self, err: Any, msg: Any) -> None:
        # Runs in the poll thread (and, for never-produced records, in the request's thread).
        if err is None and not clients.acknowledged(err, msg):
            err = "delivered without an offset: not in the log"
        if err is not None and not isinstance(err, str):  # str: never handed to librdkafka
            self.owner._check_broken(err)
        with self.owner._lock:
            if err is not None and self.error is None:
                self.error = err
            self.remaining -= 1
            done = self.remaining == 0
            if done:
                self.owner._inflight_bytes -= self.bytes
        if done:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class DurableProducer:
    def __init__(
        self,
        settings: Settings,
        *,
        on_latency: Callable[[float], None] | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        self.timeout_s = settings.api.produce_timeout_s
        self.buffer_limit = settings.api.producer_buffer_bytes
        self._overrides = overrides
        self._on_latency = on_latency or (lambda seconds: None)
        # Re-entrant: a callback can run while its thread is inside the producer (flush).
        self._lock = threading.RLock()
        self._inflight_bytes = 0
        self._producer: Any = None
        self._fatal: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        # Partition counts from broker metadata (records name their partition explicitly).
        self._partitions: dict[str, int] = {}
        self._last_logged = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        # librdkafka gives up on a record when we stop waiting for it, so the buffer drains.
        return clients.producer_config(
            self.settings,
            **{
                "message.timeout.ms": int(self.timeout_s * 1000),
                # One produce request at a time: Tansu serves a connection's requests one after
                # another (S3 round trips each), so waiting lets librdkafka pack everything
                # that arrived meanwhile into the next request: measured +10-30 % events/s and
                # lower p50/p99 than 5 in flight (docs/benchmarks-ingest.md).
                "max.in.flight.requests.per.connection": 1,
                "queue.buffering.max.kbytes": 2 * self.buffer_limit // 1024,
                "queue.buffering.max.messages": 1_000_000,
                "error_cb": self._on_error,
                "logger": _librdkafka_log,
                **self._overrides,
            },
        )

    def start(self) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(self._config())
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll_loop, name="ingest-producer-poll", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> int:
        """Stop polling, flush what was accepted (serving its callbacks); returns unflushed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._producer is None:
            return 0
        remaining = self._producer.flush(timeout_s)
        self._producer = None
        return remaining

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            try:
                producer.poll(POLL_INTERVAL_S)
            except Exception:  # a callback raising must not kill the poll thread
                log.exception("producer poll failed")
            if self._fatal is not None:
                self._replace_producer()

    def _on_error(self, err: Any) -> None:
        self.last_error = str(err)
        if not self._check_broken(err):
            now = time.monotonic()
            # The broker being down repeats every reconnect: log it once per interval.
            if now - self._last_logged >= LOG_INTERVAL_S:
                self._last_logged = now
                log.warning("producer: %s", err)

    def _check_broken(self, err: Any) -> bool:
        """Mark the producer for replacement after a fatal or fencing error."""
        broken = clients.producer_unusable(err)
        if broken and self._fatal is None:
            log.error("producer unusable (%s): replacing it", err)
            self._fatal = err
        return broken

    def _replace_producer(self) -> None:
        from confluent_kafka import Producer

        old = self._producer
        self._producer = Producer(self._config())
        self._fatal = None
        # Outstanding records of the old producer fail (its callbacks answer 503).
        try:
            old.purge(in_queue=True, in_flight=True)
            old.flush(5)  # serves the purged records' callbacks: their waiters answer 503
        except Exception:
            log.exception("purging the fatal producer failed")

    # --- sending -----------------------------------------------------------------------------

    @property
    def inflight_bytes(self) -> int:
        return self._inflight_bytes

    @property
    def queued(self) -> int:
        producer = self._producer
        return len(producer) if producer is not None else 0

    def _release(self, size: int) -> None:
        with self._lock:
            self._inflight_bytes -= size

    def _reserve(self, size: int) -> None:
        with self._lock:
            if self._inflight_bytes + size > self.buffer_limit and self._inflight_bytes > 0:
                raise ApiError(
                    429,
                    "Producer buffer full: the broker is acknowledging slower than events arrive",
                    retry_after_s=RETRY_AFTER_S,
                )
            self._inflight_bytes += size

    async def send(self, records: Sequence[Record]) -> None:
        """Produce all records and wait until every one is acknowledged (acks=all)."""
        if not records:
            return
        deadline = time.monotonic() + self.timeout_s
        error = await self._send_once(records, deadline)
        if error is not None and self._unusable(error) and await self._replaced(deadline):
            # A fatal or fenced producer (Tansu fences an idempotent producer's id after a
            # broker restart; kafka.idempotent_producer): the broker refused the write (or it
            # was purged with the old producer) and the poll thread has put a new producer in
            # place, so send once more rather than answer 503 (a partly written request
            # resent is deduplicated downstream by its idempotency keys).
            log.info("resending %d records with the replacement producer", len(records))
            error = await self._send_once(records, deadline)
        if error is not None:
            self.last_error = str(error)
            raise ApiError(503, f"Broker refused the write: {error}", retry_after_s=RETRY_AFTER_S)

    @staticmethod
    def _unusable(error: Any) -> bool:
        """Refused by an unusable producer, or purged from it when it was replaced."""
        from confluent_kafka import KafkaError

        if isinstance(error, str):  # never handed to librdkafka
            return False
        purged = error.code() in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
        return purged or clients.producer_unusable(error)

    async def _replaced(self, deadline: float) -> bool:
        """Wait (until ``deadline``) for the poll thread to replace an unusable producer."""
        while self._fatal is not None and not self._stop.is_set():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL_S)
        return not self._stop.is_set()

    async def _send_once(self, records: Sequence[Record], deadline: float) -> Any:
        """One attempt: None when every record is acknowledged, else the first delivery error."""
        if self._fatal is not None and not await self._replaced(deadline):
            raise ApiError(503, f"Broker unavailable: {self._fatal}", retry_after_s=RETRY_AFTER_S)
        producer = self._producer
        if producer is None or self._stop.is_set():
            raise ApiError(503, "Ingestion is shutting down", retry_after_s=RETRY_AFTER_S)
        size = sum(len(r.value) for r in records)
        self._reserve(size)
        waiter = _Waiter(self, asyncio.get_running_loop(), len(records), size)
        started = time.perf_counter()
        produced = 0
        try:
            for record in records:
                producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    timestamp=record.timestamp_ms,
                    on_delivery=waiter.on_delivery,
                )
                produced += 1
        except BufferError:
            self._abandon(waiter, len(records) - produced)
            raise ApiError(429, "Producer queue full", retry_after_s=RETRY_AFTER_S) from None
        except Exception as exc:  # KafkaException: fatal state, unknown topic, ...
            self._abandon(waiter, len(records) - produced)
            raise ApiError(503, f"Broker unavailable: {exc}", retry_after_s=RETRY_AFTER_S) from None
        try:
            await asyncio.wait_for(
                asyncio.shield(waiter.future), max(deadline - time.monotonic(), 0.001)
            )
        except TimeoutError:
            raise ApiError(
                503,
                f"Broker did not acknowledge within {self.timeout_s:g}s",
                retry_after_s=RETRY_AFTER_S,
            ) from None
        self._on_latency(time.perf_counter() - started)
        return waiter.error

    def _abandon(self, waiter: _Waiter, never_produced: int) -> None:
        """Account for records that were never handed to librdkafka."""
        if never_produced == waiter.remaining:
            self._release(waiter.bytes)
            return
        # Some were produced: their callbacks still come; the rest count as failed now.
        for _ in range(never_produced):
            waiter.on_delivery(NOT_PRODUCED, None)

    def partitions(self, topic: str) -> int:
        """The topic's partition count (configured count until metadata was read)."""
        return self._partitions.get(topic) or self.settings.kafka.partitions

    def ready(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """Broker reachable and our topics known: a metadata round trip (blocking)."""
        producer = self._producer
        if producer is None:
            return False, "producer not started"
        wanted = (self.settings.kafka.events_topic, self.settings.kafka.reports_topic)
        try:
            metadata = producer.list_topics(timeout=timeout_s)
        except Exception as exc:
            return False, f"broker unreachable: {exc}"
        for name in wanted:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                return False, f"topic {name} unavailable"
            self._partitions[name] = len(topic.partitions)
        return True, "ok"
