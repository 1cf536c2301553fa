"""The consumer loop: Kafka records -> the semantic core -> flush jobs for the writer thread.

One :class:`StreamProcessor` is one member of the consumer group on ``usage.events``. It owns
the partitions the group assigns it, restores each from its checkpoint (seeking to the
checkpointed offset: the checkpoint, not the Kafka committed offset, says where to resume),
feeds records to the core per partition in offset order, and every ``flush_interval_ms`` (or
``max_batch`` events) drains the core and hands the rows plus the matching checkpoints to the
:class:`~streaming.processor.writer.Writer`. Kafka offsets are committed (advisory) after the
writer has committed the checkpoint.

Replays cut flushes where the crashed run did: if a partition's checkpoint carries a pending
intent (the flush being written when the previous owner stopped), the processor processes that
partition up to the intent's last offset, holds later records, and once every partition of that
flush has reached its boundary, re-makes exactly that flush: byte-identical blocks with the same
dedup tokens, which ClickHouse drops if they had landed before the crash.

Flushes are adaptive: every ``flush_interval_ms`` unless a flush is already waiting for the
writer (then the core keeps accumulating, so a slow warehouse gets fewer, bigger blocks), and at
the latest after ``max_batch`` events.

Offsets arrive in sequence or not at all: a record past the partition's next expected offset
(a record fetched before a rebalance and handed out after it, or a hole the broker left when a
write failed half-way) is not processed; the partition is re-fetched from the expected offset
once, and only a gap that is still there after that re-fetch is accepted as a hole.

Rebalances (eager protocol): on revoke, the revoked partitions are flushed and the writer drained
(their checkpoints committed) before the partitions are released; on assign, the writer is
drained first, then each partition is claimed (fencing any previous owner) and restored.
SIGTERM: finish the batch in hand, flush, checkpoint, leave the group, exit 0.

The processor also hosts the :class:`~streaming.processor.reports.ReportsLoader` (``usage.reports``
-> ``usage_reports``, its own thread and consumer group): started with the consumer, stopped
with it (its batch in hand finished and committed), and a failure of it stops the processor as
a writer failure does.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from byoc_platform import clients
from byoc_platform.events import decode_batch, record_key
from byoc_platform.settings import Settings
from streaming.engine import Counters, EngineConfig, StreamEngine
from streaming.processor.checkpoints import CheckpointStore, stream_name
from streaming.processor.deduped import Accepted, DedupedPublisher
from streaming.processor.metrics import ProcessorMetrics
from streaming.processor.reports import ReportsLoader
from streaming.processor.warehouse_sink import WarehouseSink
from streaming.processor.writer import FlushJob, PartitionFlush, Writer

log = logging.getLogger(__name__)

CONSUME_BATCH = 1000
FETCH_WAIT_MS = 50
IDLE_POLL_S = 0.5
BUSY_WRITER_POLL_S = 0.02
SHUTDOWN_WRITE_TIMEOUT_S = 20.0
FENCE_HOLD_MAX_S = 60.0  # give up re-cutting a crashed flush after this (never expected)


@dataclass
class _Fence:
    """Replay boundary: the partition's pending intent from the previous owner's last flush."""

    last: int
    job: str
    since: float


def checkpoint_path(settings: Settings) -> Any:
    return settings.component_dir("stream") / "checkpoints.db"


class StreamProcessor:
    def __init__(self, settings: Settings, instance_id: str | None = None) -> None:
        self.settings = settings
        self.topic = settings.kafka.events_topic
        self.group = settings.stream.consumer_group
        self.instance_id = (
            instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.engine = StreamEngine(EngineConfig.from_settings(settings.stream))
        self.metrics = ProcessorMetrics()
        self.stop_requested = threading.Event()
        self.abort = threading.Event()
        self.phase = "starting"
        self.joined = False
        self.last_loop = time.monotonic()
        self.store = CheckpointStore(
            checkpoint_path(settings), stream_name(self.group, self.topic), self.instance_id
        )
        sink = WarehouseSink(
            # Loopback / in-cluster: lz4 costs more CPU than it saves (measured 10x slower here).
            lambda: clients.clickhouse(settings, compress=False, autogenerate_session_id=False),
            settings.clickhouse.database,
            self.abort,
            on_retry=lambda table: self.metrics.write_retries.labels(table).inc(),
        )
        publisher = DedupedPublisher(
            lambda: _producer(settings),
            settings.kafka.deduped_topic,
            self.abort,
        )
        self.writer = Writer(self.store, sink, publisher, self.topic, self.metrics)
        self.reports = ReportsLoader(settings, self.metrics, self.instance_id)
        self._consumer: Any = None
        self._fences: dict[int, _Fence] = {}
        self._held: dict[int, list[Any]] = {}  # records behind a replay boundary, in order
        self._accepted: dict[int, list[Accepted]] = {}  # per partition, since the last flush
        self._batch_start: dict[int, int] = {}  # first offset processed since the last flush
        self._received_at: dict[int, int] = {}  # newest receivedAt processed
        self._checkpointed: dict[int, int | None] = {}
        self._counters_seen: dict[int, Counters] = {}
        self._expect: dict[int, int] = {}  # next offset to take (processed or held)
        self._refetch: dict[int, tuple[int, int]] = {}  # partition -> (offset, in batch no.)
        self._batch_no = 0  # consume() calls so far
        self._events_since_flush = 0
        self._ch_ping: tuple[float, bool] = (0.0, False)

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        self.stop_requested.set()

    def prepare(self, timeout_s: float = 120.0) -> bool:
        """Topics and warehouse schema, idempotently (the stack bootstrap does it too); False
        when a stop was requested while Kafka or ClickHouse was still out of reach."""
        from byoc_platform.stack.bootstrap import ensure_topics, ensure_warehouse_schema

        self.phase = "preparing"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ensure_topics(self.settings)
                ensure_warehouse_schema(self.settings)
                return True
            except Exception as exc:
                if self.stop_requested.is_set():  # asked to stop: nothing was consumed yet
                    log.info("stopped while waiting for Kafka and ClickHouse: %s", exc)
                    return False
                if time.monotonic() > deadline:
                    raise
                log.warning("waiting for Kafka and ClickHouse: %s", exc)
                self.stop_requested.wait(1.0)

    def run(self) -> None:
        """Consume until :meth:`request_stop`; then flush, checkpoint and leave the group."""
        from confluent_kafka import Consumer

        if not self.prepare():
            return
        self.writer.start()
        self.reports.start()
        consumer = Consumer(
            clients.consumer_config(
                self.settings,
                self.group,
                **{
                    "client.id": f"byoc-stream-{self.instance_id}",
                    "logger": logging.getLogger("rdkafka.consumer"),  # JSON logs, not stderr
                    # Tansu holds a fetch for the whole wait even when data arrives (measured:
                    # ack -> consume p50 198 ms at the default 500 ms, 24 ms at 100, 5 ms at 20).
                    "fetch.wait.max.ms": FETCH_WAIT_MS,
                },
            )
        )
        self._consumer = consumer
        consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.phase = "running"
        log.info(
            "stream processor %s consuming %s as group %s",
            self.instance_id,
            self.topic,
            self.group,
        )
        interval = self.settings.stream.flush_interval_ms / 1000
        max_batch = self.settings.stream.max_batch
        next_flush = time.monotonic() + interval
        try:
            while not self.stop_requested.is_set():
                now = time.monotonic()
                # Wake up at the next flush tick (consume() waits its whole timeout unless
                # CONSUME_BATCH records arrive); when due but the writer still has a job
                # waiting, keep consuming in short slices instead of spinning.
                timeout = min(max(next_flush - now, BUSY_WRITER_POLL_S), IDLE_POLL_S)
                messages = consumer.consume(CONSUME_BATCH, timeout)
                self._batch_no += 1
                self.last_loop = time.monotonic()
                for message in messages:
                    self._handle(message)
                if self._fences:
                    self._release_fences()
                self._collect_results()
                if self.writer.error is not None:
                    raise RuntimeError("stream writer failed") from self.writer.error
                if self.reports.error is not None:
                    raise RuntimeError("reports loader failed") from self.reports.error
                now = time.monotonic()
                # While a job already waits for the writer, keep accumulating: bigger flushes
                # when the warehouse is slow, instead of a queue of small ones (adaptive).
                due = now >= next_flush and not self.writer.has_queued
                if due or self._events_since_flush >= max_batch:
                    self._flush()
                    next_flush = now + interval
        finally:
            self._shutdown(consumer)

    def _shutdown(self, consumer: Any) -> None:
        self.phase = "stopping"
        self.reports.request_stop()  # finishes its batch meanwhile; joined below
        try:
            if self.writer.error is None:
                self._flush()
                if not self.writer.wait_idle(SHUTDOWN_WRITE_TIMEOUT_S):
                    log.warning("writes still failing at shutdown; abandoning (replay on start)")
                    self.abort.set()
                    self.writer.wait_idle(5.0)
                self._collect_results()
            self.abort.set()  # nothing may block from here on
            consumer.close()  # leaves the group (on_revoke: nothing left to flush)
        finally:
            self.reports.stop(SHUTDOWN_WRITE_TIMEOUT_S)
            self.writer.stop(5.0)
            self.store.close()
            self.phase = "stopped"
            log.info("stream processor %s stopped", self.instance_id)

    # ------------------------------------------------------------------ records
    def _handle(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            if not error.retriable() and error.fatal():
                raise RuntimeError(f"Kafka consumer fatal error: {error}")
            log.warning("consumer error: %s", error)
            return
        partition = message.partition()
        engine = self.engine.partitions.get(partition)
        if engine is None:  # fenced and not re-assigned yet: not ours
            return
        offset = message.offset()
        if not self._in_sequence(partition, offset):
            return
        held = self._held.get(partition)
        if held is not None:
            held.append(message)
            return
        fence = self._fences.get(partition)
        if fence is not None and offset > fence.last:
            # Past the crashed run's boundary: hold it until that flush is cut again.
            self._held[partition] = [message]
            self._release_fences()
            return
        try:
            batch = decode_batch(message.value())
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            # Skip it deterministically (a replay skips it too) and keep the offset covered.
            self.metrics.bad_records.inc()
            log.error(
                "partition %d offset %d: not an EventBatch, skipped: %s", partition, offset, exc
            )
            if engine.take_offset(offset):
                self._batch_start.setdefault(partition, offset)  # its offset is committed
            return
        before = engine.counters.events
        if engine.process(offset, batch):
            self._batch_start.setdefault(partition, offset)
            self._received_at[partition] = batch.receivedAt
            self._events_since_flush += len(batch.events)
            accepted = engine.counters.events - before
            if accepted:
                whole = accepted == len(batch.events)
                key = message.key() or record_key(batch.environment, batch.events[0].customerId)
                self._accepted.setdefault(partition, []).append(
                    Accepted(key, message.value() if whole else None, batch.receivedAt, accepted)
                )

    def _in_sequence(self, partition: int, offset: int) -> bool:
        """Whether to take this record: it is the expected offset (or one the engine skips as
        covered), or a gap that a re-fetch from the expected offset confirmed."""
        expected = self._expect.get(partition)
        if expected is None or offset <= expected:
            self._refetch.pop(partition, None)
            if expected is None or offset == expected:
                self._expect[partition] = offset + 1
            return True
        refetch = self._refetch.get(partition)
        if refetch is None or refetch[0] != expected:
            self.metrics.offset_gaps.inc()
            log.warning(
                "partition %d: offset %d arrived, %d expected; fetching again from %d",
                partition,
                offset,
                expected,
                expected,
            )
            if self._seek(partition, expected):
                self._refetch[partition] = (expected, self._batch_no)
                return False
        elif refetch[1] == self._batch_no:
            return False  # the rest of the batch fetched before the seek
        else:
            log.warning(
                "partition %d: offsets %d-%d are not in the log (a write the broker left "
                "unfinished); continuing at %d",
                partition,
                expected,
                offset - 1,
                offset,
            )
        self._refetch.pop(partition, None)
        self._expect[partition] = offset + 1
        return True

    def _seek(self, partition: int, offset: int) -> bool:
        from confluent_kafka import TopicPartition

        try:
            self._consumer.seek(TopicPartition(self.topic, partition, offset))
            return True
        except Exception as exc:  # e.g. not fetching yet: take the record rather than stall
            log.warning("partition %d: seek to %d failed (%s)", partition, offset, exc)
            return False

    def _release_fences(self, force: bool = False) -> None:
        """Re-cut each crashed flush once all its partitions here reached their boundaries.

        The flush is re-made with exactly those partitions, so its blocks and tokens equal the
        ones possibly written before the crash. If some of its partitions went to another
        instance, the rest is still cut at its boundaries (the tokens then differ; the rows
        converge under FINAL, see the package docstring)."""
        now = time.monotonic()
        groups: dict[str, list[int]] = {}
        for partition, fence in self._fences.items():
            groups.setdefault(fence.job, []).append(partition)
        for job, members in groups.items():
            reached = all(self._at_fence(p) for p in members)
            stale = now - self._fences[members[0]].since > FENCE_HOLD_MAX_S
            if not (reached or force or stale):
                continue
            if not reached:
                log.warning("replay of flush %s: boundaries not reached, cutting anyway", job)
            for p in members:
                del self._fences[p]
            self._flush(members)
            for p in members:
                for message in self._held.pop(p, []):
                    self._handle(message)

    def _at_fence(self, partition: int) -> bool:
        engine = self.engine.partitions.get(partition)
        fence = self._fences[partition]
        return engine is not None and (engine.next_offset or 0) - 1 >= fence.last

    def _flush(self, partitions: list[int] | None = None) -> None:
        """Drain the core (all partitions, or the given ones) into one flush job. Partitions
        still before a replay boundary are left for :meth:`_release_fences`."""
        parts: list[PartitionFlush] = []
        for partition in sorted(partitions if partitions is not None else self._batch_start):
            first = self._batch_start.get(partition)
            engine = self.engine.partitions.get(partition)
            if first is None or engine is None or partition in self._fences:
                continue
            last = (engine.next_offset or 0) - 1
            output = engine.drain(include_open=True)
            checkpoint = engine.checkpoint()
            parts.append(
                PartitionFlush(
                    partition,
                    first,
                    last,
                    output,
                    checkpoint,
                    self._received_at.get(partition),
                    self._accepted.pop(partition, []),
                )
            )
            del self._batch_start[partition]
            self._count(partition, engine.counters)
            self.metrics.dedup_entries.labels(str(partition)).set(engine.dedup_entries)
            self.metrics.open_windows.labels(str(partition)).set(engine.open_windows)
        if partitions is None:
            self._events_since_flush = 0
        if parts:
            self.writer.submit(FlushJob(parts))
            self._update_lag()

    def _count(self, partition: int, counters: Counters) -> None:
        seen = self._counters_seen.setdefault(partition, Counters())
        m = self.metrics
        m.records.inc(counters.records - seen.records)
        m.events.inc(counters.events - seen.events)
        m.duplicates.inc(counters.duplicates - seen.duplicates)
        m.late.inc(counters.late - seen.late)
        self._counters_seen[partition] = Counters(**vars(counters))

    def _collect_results(self) -> None:
        from confluent_kafka import TopicPartition

        offsets = []
        while not self.writer.results.empty():
            result = self.writer.results.get()
            for part in result.committed:
                next_offset = part.checkpoint.next_offset
                self._checkpointed[part.partition] = next_offset
                label = str(part.partition)
                if next_offset is not None:
                    self.metrics.checkpoint_offset.labels(label).set(next_offset)
                    offsets.append(TopicPartition(self.topic, part.partition, next_offset))
                if part.received_at is not None:
                    self.metrics.checkpoint_received_at.labels(label).set(part.received_at / 1000)
            for partition in result.fenced:
                self._drop(partition)
        if offsets and self._consumer is not None:
            try:  # advisory (monitoring); the checkpoint is what resumes
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as exc:
                log.debug("offset commit skipped: %s", exc)
        self._update_lag()

    def _update_lag(self) -> None:
        for partition, engine in self.engine.partitions.items():
            consumed = engine.next_offset
            done = self._checkpointed.get(partition)
            if consumed is not None:
                lag = consumed - (done if done is not None else 0)
                self.metrics.checkpoint_lag.labels(str(partition)).set(lag)

    # ------------------------------------------------------------------ rebalances
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        self.writer.wait_idle()  # earlier jobs (maybe of these partitions) settle first
        self._collect_results()
        for tp in partitions:
            p = tp.partition
            self.writer.unfence(p)
            restored = self.store.claim(p)
            self.engine.assign(p, restored.state, restored.dedup)
            self._checkpointed[p] = restored.next_offset
            if restored.next_offset is not None:
                self._expect[p] = restored.next_offset
            self._counters_seen[p] = Counters()
            tp.offset = (
                restored.next_offset if restored.next_offset is not None else OFFSET_BEGINNING
            )
            pending = restored.pending
            if pending is not None and (
                restored.next_offset is None or pending.last >= restored.next_offset
            ):
                self._fences[p] = _Fence(pending.last, pending.job, time.monotonic())
            log.info(
                "assigned partition %d: resume at %s (epoch %d, %d dedup entries, replay fence %s)",
                p,
                restored.next_offset,
                restored.epoch,
                len(restored.dedup),
                f"{pending.last} of flush {pending.job}" if p in self._fences else None,
            )
        consumer.assign(partitions)
        self.joined = True
        self.metrics.assigned.set(len(self.engine.partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        revoked = [tp.partition for tp in partitions]
        if self.writer.error is None and not self.abort.is_set():
            if any(p in self._fences for p in revoked):
                self._release_fences()  # cut what reached its boundary; the rest is dropped
            self._flush(revoked)
            self.writer.wait_idle()
        self._collect_results()
        for p in revoked:
            self._drop(p)
        log.info("revoked partitions %s", revoked)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Another member may own them already: write nothing more for them.
        lost = [tp.partition for tp in partitions]
        log.warning("lost partitions %s (session timed out?)", lost)
        for p in lost:
            self._drop(p)

    def _drop(self, partition: int) -> None:
        self.engine.revoke(partition)
        self._fences.pop(partition, None)
        self._held.pop(partition, None)
        self._accepted.pop(partition, None)
        self._batch_start.pop(partition, None)
        self._received_at.pop(partition, None)
        self._checkpointed.pop(partition, None)
        self._expect.pop(partition, None)
        self._refetch.pop(partition, None)
        self._counters_seen.pop(partition, None)
        self.metrics.forget_partition(partition)
        self.metrics.assigned.set(len(self.engine.partitions))

    # ------------------------------------------------------------------ health
    def healthy(self) -> tuple[bool, dict[str, object]]:
        running = self.phase == "running"
        stuck = running and time.monotonic() - self.last_loop > 120
        reports = self.reports.status()
        failed = running and not reports["alive"]  # the loop raises its error right after
        return not (stuck or failed) and self.phase != "stopped", {
            "phase": self.phase,
            "reports": reports,
        }

    def ready(self) -> tuple[bool, dict[str, object]]:
        clickhouse = self._clickhouse_reachable()
        ok = self.phase == "running" and self.joined and clickhouse
        return ok, {
            "phase": self.phase,
            "joined": self.joined,
            "partitions": sorted(self.engine.partitions),
            "clickhouse": clickhouse,
        }

    def _clickhouse_reachable(self) -> bool:
        checked_at, ok = self._ch_ping
        if time.monotonic() - checked_at < 1.0:
            return ok
        try:
            with urllib.request.urlopen(f"{self.settings.clickhouse.url}/ping", timeout=1) as r:
                ok = r.status == 200
        except Exception:
            ok = False
        self._ch_ping = (time.monotonic(), ok)
        return ok


def _producer(settings: Settings) -> Any:
    from confluent_kafka import Producer

    # murmur2 like the Java client, so a customer's deduped records share a partition.
    return Producer(
        clients.producer_config(
            settings,
            **{
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "logger": logging.getLogger("rdkafka.producer"),
            },
        )
    )
