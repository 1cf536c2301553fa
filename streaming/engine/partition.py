"""The semantic core for ONE Kafka partition: dedup, watermark, 1-minute windows, late rows.

Pure and deterministic: output depends only on the (offset, EventBatch) sequence fed to
:meth:`PartitionEngine.process` since the restored state, never on wall-clock time or on
when :meth:`PartitionEngine.drain` is called (drains only decide how many intermediate
snapshots appear; snapshots carry ``version`` = row count, so the newest one wins and equal
versions are equal rows).

Time conventions (the Flink job's, so that both engines classify every event alike):
- watermark W = highest event time of the partition's deduplicated events so far minus the
  out-of-orderness bound; W asserts "no more events at or before W".
- window [s, e) is complete, and its final rows emitted, once e - 1 <= W.
- an event is LATE if its window is complete by the watermark BEFORE the event itself.
- dedup precedes everything: a duplicate moves neither the watermark nor any window.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from byoc_platform.events import EventBatch, decode_batch
from streaming.engine.config import EngineConfig
from streaming.engine.dedup import DedupIndex
from streaming.engine.dimensions import describe
from streaming.engine.rows import EventRow, LateHourRow, MinuteRow
from streaming.engine.state import DedupEntry, PartitionState, WindowState, decode_state
from streaming.engine.windows import WindowAcc, WindowKey, late_rows

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000


class PendingOutputError(RuntimeError):
    """State was requested while rows were still waiting to be drained."""


@dataclass
class Output:
    """Rows produced since the last drain, in a deterministic order."""

    events: list[EventRow] = field(default_factory=list)
    minutes: list[MinuteRow] = field(default_factory=list)
    late_hours: list[LateHourRow] = field(default_factory=list)
    closed_windows: int = 0  # windows whose FINAL rows are in ``minutes``

    def __bool__(self) -> bool:
        return bool(self.events or self.minutes or self.late_hours)


@dataclass
class Counters:
    """Monotone totals since this engine object was created (for metrics, not state)."""

    records: int = 0
    skipped_records: int = 0  # offsets already covered by the state (replayed deliveries)
    events: int = 0
    duplicates: int = 0
    late: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """Incremental state: store ``state`` (small) and apply the dedup changes to a table.

    ``dedup_added`` are entries (environment, customer, key, first_seen_ms) recorded since the
    previous checkpoint (upsert them: an expired key claimed again gets a new first_seen);
    every stored entry with first_seen_ms <= ``dedup_evict_through`` is expired: delete it.
    """

    partition: int
    next_offset: int | None
    state: bytes
    dedup_added: list[DedupEntry]
    dedup_evict_through: int | None


class PartitionEngine:
    """Dedup + windows of one partition; feed records in offset order."""

    def __init__(self, partition: int, config: EngineConfig) -> None:
        self.partition = partition
        self.config = config
        self.counters = Counters()
        self._dedup = DedupIndex(config.dedup_window_ms)
        self._watermark: int | None = None
        self._next_offset: int | None = None
        self._windows: dict[WindowKey, WindowAcc] = {}
        self._ends: list[int] = []  # heap of the distinct ends of open windows
        self._by_end: dict[int, list[WindowKey]] = {}
        self._touched: dict[WindowKey, None] = {}  # ordered set: touched since last drain
        self._journal: list[DedupEntry] = []  # dedup claims since the last checkpoint
        self._out = Output()
        self._late_hours: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ inspection
    @property
    def watermark(self) -> int | None:
        return self._watermark

    @property
    def next_offset(self) -> int | None:
        """The offset to consume next (None before the first record)."""
        return self._next_offset

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    @property
    def dedup_entries(self) -> int:
        return len(self._dedup)

    # ------------------------------------------------------------------ processing
    def process_value(self, offset: int, value: bytes) -> bool:
        """Decode a Kafka record value (byoc_platform.events format) and process it."""
        return self.process(offset, decode_batch(value))

    def process(self, offset: int, batch: EventBatch) -> bool:
        """Process one record; False if ``offset`` is already covered by the state (skipped)."""
        if self._next_offset is not None and offset < self._next_offset:
            self.counters.skipped_records += 1
            return False
        self._next_offset = offset + 1
        self.counters.records += 1
        environment = batch.environment
        received_at = batch.receivedAt
        dedup = self._dedup
        dedup.advance(received_at)
        claim = dedup.claim
        journal = self._journal
        clock = dedup.clock
        window_ms = self.config.window_ms
        ooo = self.config.out_of_orderness_ms
        windows = self._windows
        touched = self._touched
        events_out = self._out.events
        counters = self.counters
        for event in batch.events:
            customer = event.customerId
            idem = event.idempotencyKey
            key = (environment, customer, idem)
            if not claim(key):
                counters.duplicates += 1
                continue
            journal.append((environment, customer, idem, clock))  # type: ignore[arg-type]
            counters.events += 1
            ts = event.timestamp
            resource = event.resourceId or ""
            name = event.eventName
            dims = describe(event.dimensions)
            events_out.append(
                EventRow(
                    environment,
                    customer,
                    resource,
                    name,
                    idem,
                    ts,
                    received_at,
                    dims.labels,
                    dims.values,
                    dims.json,
                )
            )
            start = ts - ts % window_ms
            wkey = (environment, customer, resource, name, dims.labels_key, start)
            wm = self._watermark
            if wm is not None and start + window_ms - 1 <= wm:
                counters.late += 1
                self._out.minutes.extend(late_rows(wkey, dims.labels, ts, dims.values, idem))
                hour = (environment, ts - ts % HOUR_MS)
                if self._late_hours.get(hour, received_at - 1) < received_at:
                    self._late_hours[hour] = received_at
            else:
                acc = windows.get(wkey)
                if acc is None:
                    acc = windows[wkey] = WindowAcc(dims.labels)
                    end = start + window_ms
                    keys = self._by_end.get(end)
                    if keys is None:
                        self._by_end[end] = [wkey]
                        heapq.heappush(self._ends, end)
                    else:
                        keys.append(wkey)
                acc.add(ts, dims.values)
                touched[wkey] = None
            candidate = ts - ooo
            if wm is None or candidate > wm:
                self._watermark = candidate
                if self._ends and self._ends[0] - 1 <= candidate:
                    self._close_through(candidate)
        return True

    def _close_through(self, watermark: int) -> None:
        ends, windows, touched, minutes = (
            self._ends,
            self._windows,
            self._touched,
            self._out.minutes,
        )
        while ends and ends[0] - 1 <= watermark:
            end = heapq.heappop(ends)
            for wkey in self._by_end.pop(end):
                acc = windows.pop(wkey)
                minutes.extend(acc.rows(wkey))
                touched.pop(wkey, None)
                self._out.closed_windows += 1

    def drain(self, include_open: bool = True) -> Output:
        """Take the rows produced so far: deduplicated events, final rows of windows the
        watermark closed, late rows, late hours, and (``include_open``) the current snapshot
        of every still-open window touched since the last drain (early firing)."""
        out = self._out
        if include_open:
            windows = self._windows
            for wkey in self._touched:
                out.minutes.extend(windows[wkey].rows(wkey))
            self._touched = {}
        out.late_hours = [LateHourRow(e, h, t) for (e, h), t in self._late_hours.items()]
        self._late_hours = {}
        self._out = Output()
        return out

    def flush_all(self) -> Output:
        """Close every open window regardless of the watermark (end of a bounded input).

        The state is otherwise unchanged; only for tests and one-shot backfills."""
        self._close_through(2**62)
        return self.drain()

    # ------------------------------------------------------------------ state
    def _check_drained(self) -> None:
        if self._out or self._late_hours:
            raise PendingOutputError(
                f"partition {self.partition}: drain() and write the rows before taking state"
            )

    def _state(self, dedup: list[DedupEntry]) -> PartitionState:
        return PartitionState(
            partition=self.partition,
            next_offset=self._next_offset,
            watermark=self._watermark,
            clock=self._dedup.clock,
            windows=[WindowState(list(k), acc.to_list()) for k, acc in self._windows.items()],
            touched=[list(k) for k in self._touched],
            dedup=dedup,
        )

    def snapshot(self) -> bytes:
        """The whole state (dedup entries included) as bytes; restore with :meth:`restore`."""
        self._check_drained()
        self._journal = []
        return self._state(list(self._dedup.entries())).encode()

    def checkpoint(self) -> Checkpoint:
        """Incremental state: the small part as bytes plus the dedup changes since the last
        checkpoint (or snapshot). Restore with :meth:`restore` and all live dedup entries."""
        self._check_drained()
        added, self._journal = self._journal, []
        clock = self._dedup.clock
        return Checkpoint(
            partition=self.partition,
            next_offset=self._next_offset,
            state=self._state([]).encode(),
            dedup_added=added,
            dedup_evict_through=None if clock is None else clock - self.config.dedup_window_ms,
        )

    @classmethod
    def restore(
        cls, config: EngineConfig, state: bytes, dedup: Iterable[DedupEntry] = ()
    ) -> PartitionEngine:
        """Rebuild an engine from :meth:`snapshot` bytes, or from :meth:`checkpoint` state plus
        the stored dedup entries (entries already past the window are dropped)."""
        decoded = decode_state(state)
        engine = cls(decoded.partition, config)
        engine._next_offset = decoded.next_offset
        engine._watermark = decoded.watermark
        engine._dedup = DedupIndex(config.dedup_window_ms, decoded.clock)
        entries = [*decoded.dedup, *dedup]
        entries.sort(key=lambda entry: entry[3])  # eviction pops the oldest first
        engine._dedup.load(entries)
        engine._dedup.evict()
        for window in decoded.windows:
            wkey: WindowKey = tuple(window.key)  # type: ignore[assignment]
            engine._windows[wkey] = WindowAcc.from_list(window.acc)
            end = wkey[5] + config.window_ms
            if end in engine._by_end:
                engine._by_end[end].append(wkey)
            else:
                engine._by_end[end] = [wkey]
                heapq.heappush(engine._ends, end)
        engine._touched = {tuple(k): None for k in decoded.touched}  # type: ignore[misc]
        log.debug(
            "restored partition %s: next_offset=%s windows=%d dedup=%d",
            decoded.partition,
            decoded.next_offset,
            len(engine._windows),
            len(engine._dedup),
        )
        return engine
