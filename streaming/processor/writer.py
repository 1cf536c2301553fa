"""The write path: one thread that makes each flush durable, then checkpoints it, in order.

A flush (:class:`FlushJob`) holds, per partition, the rows the engine drained for one offset
range and the checkpoint taken right after. The thread handles jobs strictly in order:

1. record the ranges as the partitions' pending intent (checkpoint store; fences stale owners),
2. start producing the deduplicated events to ``usage.deduped`` (acks arrive meanwhile),
3. insert the rows into ClickHouse, one block per table with the flush's dedup token,
4. wait for every ``usage.deduped`` acknowledgement,
5. commit the checkpoints (state + next offsets + dedup changes) in one transaction.

A job's checkpoint is committed only after all of its writes and all earlier jobs' checkpoints,
so a checkpoint never covers an offset whose rows are not durable. Failed writes are retried with
the same tokens; the thread never skips a job. When the processor stops during an outage the
thread gives up (:class:`~streaming.processor.errors.Aborted`) without committing: the next start
replays from the last checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from streaming.engine import Checkpoint, Output
from streaming.processor.checkpoints import CheckpointStore
from streaming.processor.deduped import Accepted, DedupedPublisher, records_for
from streaming.processor.errors import Aborted
from streaming.processor.metrics import ProcessorMetrics
from streaming.processor.warehouse_sink import (
    EVENTS_TABLE,
    LATE_HOURS_TABLE,
    MINUTE_TABLE,
    TABLES,
    WarehouseSink,
    dedup_token,
    job_key,
)

log = logging.getLogger(__name__)


@dataclass
class PartitionFlush:
    """The rows of one partition's offset range [first, last] and the checkpoint after it."""

    partition: int
    first: int
    last: int
    output: Output
    checkpoint: Checkpoint
    received_at: int | None  # newest receivedAt in the range (for the freshness gauge)
    accepted: list[Accepted] = field(default_factory=list)  # input records -> deduped records


@dataclass
class FlushJob:
    parts: list[PartitionFlush]
    drained_at: float = field(default_factory=time.monotonic)


@dataclass
class JobResult:
    committed: list[PartitionFlush]
    fenced: set[int]


class Writer:
    def __init__(
        self,
        store: CheckpointStore,
        sink: WarehouseSink,
        publisher: DedupedPublisher,
        topic: str,
        metrics: ProcessorMetrics,
        max_pending: int = 1,
    ) -> None:
        self.store = store
        self.sink = sink
        self.publisher = publisher
        self.topic = topic
        self.metrics = metrics
        self.results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._jobs: queue.Queue[FlushJob | None] = queue.Queue(maxsize=max_pending)
        self._unfinished = 0
        self._idle = threading.Condition()
        self._fenced: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="stream-writer", daemon=True)
        self._pool = ThreadPoolExecutor(len(TABLES), thread_name_prefix="stream-insert")

    # ------------------------------------------------------------------ consumer side
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: FlushJob) -> None:
        """Queue a job; blocks while ``max_pending`` jobs wait (backpressure on consuming)."""
        if self.error is not None:
            raise RuntimeError("stream writer failed") from self.error
        with self._idle:
            self._unfinished += 1
        while True:
            try:
                self._jobs.put(job, timeout=0.5)
                return
            except queue.Full:
                if not self.alive:
                    raise RuntimeError("stream writer stopped") from self.error

    @property
    def has_queued(self) -> bool:
        """A job waits behind the one being written (flushing now would only queue more)."""
        return not self._jobs.empty()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted job is done (or the thread died); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._idle:
            while self._unfinished and self.alive:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.5 if remaining is None else min(0.5, remaining))
        return self._unfinished == 0

    def unfence(self, partition: int) -> None:
        """Allow writes for a partition this instance owns again (call when idle)."""
        self._fenced.discard(partition)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.alive:
            try:
                self._jobs.put(None, timeout=timeout_s)
            except queue.Full:
                return
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._write(job)
            except Aborted as exc:
                log.warning("write abandoned on shutdown, checkpoint not advanced: %s", exc)
                self.error = exc
            except BaseException as exc:  # a bug: stop rather than skip a job
                log.exception("stream writer failed; the processor will exit")
                self.error = exc
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()
            if self.error is not None:
                with self._idle:
                    self._unfinished = 0
                    self._idle.notify_all()
                return

    def _write(self, job: FlushJob) -> None:
        stage = self.metrics.stage_seconds
        started = time.monotonic()
        stage.labels("queued").observe(started - job.drained_at)
        parts = [p for p in job.parts if p.partition not in self._fenced]
        ranges = {p.partition: (p.first, p.last) for p in parts}
        key = job_key(ranges)
        fenced = self.store.record_intent(ranges, key)
        if fenced:
            # Another instance owns them now; the rest is written under the same key (the
            # intent names the full flush), so a replay of it still cuts the same flush.
            self._fence(fenced)
            parts = [p for p in parts if p.partition not in fenced]
        t = time.monotonic()
        stage.labels("intent").observe(t - started)
        # The tables' blocks go in parallel (independent requests, each with its own token),
        # usage_minute first: it is what dashboards and counters read.
        inserts = []
        for table, columns, encode in TABLES:
            rows = [row for p in parts for row in _rows(p.output, table)]
            if rows:
                token = dedup_token(self.topic, key, table)
                inserts.append(self._pool.submit(self._insert, table, columns, encode, rows, token))
        records = [r for p in parts for r in records_for(p.accepted, p.output.events)]
        self.publisher.send(records)
        for insert in inserts:
            insert.result()  # re-raises Aborted (shutdown during an outage)
        t, before = time.monotonic(), t
        stage.labels("clickhouse").observe(t - before)
        self.publisher.wait()
        self.metrics.deduped_published.inc(len(records))
        t, before = time.monotonic(), t
        stage.labels("deduped_ack").observe(t - before)
        late = self.store.commit([p.checkpoint for p in parts])
        if late:
            self._fence(late)
        t, before = time.monotonic(), t
        stage.labels("checkpoint").observe(t - before)
        committed = [p for p in parts if p.partition not in late]
        self.metrics.events_durable.inc(sum(len(p.output.events) for p in committed))
        self.metrics.batch_seconds.observe(t - job.drained_at)
        self.metrics.batch_events.observe(sum(len(p.output.events) for p in parts))
        self.results.put(JobResult(committed, fenced | late))

    def _insert(
        self,
        table: str,
        columns: tuple[str, ...],
        encode: Callable[[Any], bytes],
        rows: list[Any],
        token: str,
    ) -> None:
        self.sink.insert(table, columns, lambda: encode(rows), token)  # encoded per attempt
        self.metrics.rows_written.labels(table).inc(len(rows))

    def _fence(self, partitions: set[int]) -> None:
        log.warning("partitions %s are owned by another instance now; dropping them", partitions)
        self.metrics.fenced.inc(len(partitions))
        self._fenced |= partitions


def _rows(output: Output, table: str) -> list:  # type: ignore[type-arg]
    if table == EVENTS_TABLE:
        return output.events
    if table == MINUTE_TABLE:
        return output.minutes
    if table == LATE_HOURS_TABLE:
        return output.late_hours
    raise ValueError(f"unknown table {table}")
