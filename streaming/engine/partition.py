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
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from byoc_platform.events import EventBatch, decode_batch
from streaming.engine.config import EngineConfig
from streaming.engine.dedup import DedupIndex
from streaming.engine.dimensions import (
    EMPTY_JSON,
    NO_DIMENSIONS,
    SORTED_ENCODER,
    DimensionDescriber,
)
from streaming.engine.rows import EventRow, LateHourRow, MinuteRow
from streaming.engine.state import DedupEntry, PartitionState, WindowState, decode_state
from streaming.engine.windows import WindowAcc, WindowKey, late_rows

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
NO_WATERMARK = -(2**62)  # before the first event: nothing is late
_NEVER = 2**62  # sentinel end in the heap of window ends, so the hot loop needs no emptiness test


class InvalidRecord(ValueError):
    """A record value that is not an EventBatch (dead-letter it; the engine state is intact)."""


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
        self._watermark = NO_WATERMARK
        self._describe = DimensionDescriber()
        self._next_offset: int | None = None
        self._windows: dict[WindowKey, WindowAcc] = {}
        self._ends: list[int] = [_NEVER]  # heap of the distinct ends of open windows
        self._by_end: dict[int, list[WindowKey]] = {}
        self._touched: dict[WindowKey, None] = {}  # ordered set: touched since last drain
        self._claims = 0  # dedup claims since the last checkpoint: the newest in dedup.order
        self._out = Output()
        self._late_hours: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ inspection
    @property
    def watermark(self) -> int | None:
        return None if self._watermark == NO_WATERMARK else self._watermark

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
        try:
            batch = decode_batch(value)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidRecord(f"partition {self.partition} offset {offset}: {exc}") from exc
        return self.process(offset, batch)

    def take_offset(self, offset: int) -> bool:
        """Cover ``offset``; False if the state already covers it (skipped). Alone, for a record
        that is not an EventBatch, only the offset moves: the receive clock, which evicts the
        dedup window, does not (the record's Kafka timestamp is any producer's choice)."""
        if self._next_offset is not None and offset < self._next_offset:
            self.counters.skipped_records += 1
            return False
        self._next_offset = offset + 1
        return True

    def process(self, offset: int, batch: EventBatch) -> bool:
        """Process one record; False if ``offset`` is already covered by the state (skipped)."""
        if not self.take_offset(offset):
            return False
        environment = batch.environment
        received_at = batch.receivedAt
        dedup = self._dedup
        dedup.advance(received_at)
        clock: int = dedup.clock  # type: ignore[assignment]
        seen, order, ttl = dedup.seen, dedup.order, dedup.window_ms
        window_ms = self.config.window_ms
        window_last = window_ms - 1
        ooo = self.config.out_of_orderness_ms
        windows = self._windows
        touched = self._touched
        events_out = self._out.events
        describe = self._describe
        label_keys = describe.cache
        encode_sorted = SORTED_ENCODER.encode
        wm = self._watermark
        # Events of an hour that had ended when they arrived: the hourly rollup of that hour may
        # have run already, so the hour is recorded for a re-rollup even when the event is not
        # behind the watermark (an idle partition's watermark lags; F73).
        received_hour = received_at - received_at % HOUR_MS
        accepted = duplicates = late = 0
        # The hot loop: locals only, dedup inlined (DedupIndex.claim's rule).
        for event in batch.events:
            customer = event.customerId
            idem = event.idempotencyKey
            key = (environment, customer, idem)
            first = seen.get(key)
            if first is not None and clock - first < ttl:
                duplicates += 1
                continue
            seen[key] = clock
            order.append((clock, key))  # also the checkpoint journal: see checkpoint()
            accepted += 1
            ts = event.timestamp
            resource = event.resourceId or ""
            name = event.eventName
            dims = event.dimensions
            if dims:
                # DimensionDescriber inlined for the common types (a call costs ~10% here)
                labels = {}
                values = {}
                for dname, dvalue in dims.items():
                    kind = type(dvalue)
                    if kind is str:
                        labels[dname] = dvalue
                    elif kind is int or kind is float:
                        values[dname] = float(dvalue)
                    else:
                        labels, values, labels_key, dims_json = describe(dims)
                        break
                else:
                    if labels:
                        items = tuple(labels.items())
                        labels_key = label_keys.get(items)
                        if labels_key is None:
                            labels_key = describe.labels_key(labels, items)
                    else:
                        labels_key = EMPTY_JSON
                    dims_json = encode_sorted(dims).decode()
            else:
                labels, values, labels_key, dims_json = NO_DIMENSIONS
            events_out.append(
                EventRow(
                    environment,
                    customer,
                    resource,
                    name,
                    idem,
                    ts,
                    received_at,
                    labels,
                    values,
                    dims_json,
                )
            )
            start = ts - ts % window_ms
            wkey = (environment, customer, resource, name, labels_key, start)
            if start + window_last <= wm:
                late += 1
                self._late(wkey, labels, ts, values, idem, received_at)
            else:
                if ts < received_hour:
                    self._late_hour(environment, ts, received_at)
                acc = windows.get(wkey)
                if acc is None:
                    acc = windows[wkey] = WindowAcc(labels, ts)
                    self._register(wkey, start + window_ms)
                # WindowAcc.add inlined (the hot loop's largest cost was this call)
                counts = acc.events
                counts[0] += 1
                if ts < counts[1]:
                    counts[1] = ts
                elif ts > counts[2]:
                    counts[2] = ts
                if values:
                    metrics = acc.metrics
                    for metric, value in values.items():
                        m = metrics.get(metric)
                        if m is None:
                            metrics[metric] = [1, value, value, value, ts, ts]
                            continue
                        m[0] += 1
                        m[1] += value
                        if value < m[2]:
                            m[2] = value
                        if value > m[3]:
                            m[3] = value
                        if ts < m[4]:
                            m[4] = ts
                        elif ts > m[5]:
                            m[5] = ts
                touched[wkey] = None
            if ts - ooo > wm:
                wm = self._watermark = ts - ooo
                if self._ends[0] - 1 <= wm:  # the heap always holds the _NEVER sentinel
                    self._close_through(wm)
        self._claims += accepted
        counters = self.counters
        counters.records += 1
        counters.events += accepted
        counters.duplicates += duplicates
        counters.late += late
        return True

    def _register(self, wkey: WindowKey, end: int) -> None:
        keys = self._by_end.get(end)
        if keys is None:
            self._by_end[end] = [wkey]
            heapq.heappush(self._ends, end)
        else:
            keys.append(wkey)

    def _late(
        self,
        wkey: WindowKey,
        labels: dict[str, str],
        ts: int,
        values: dict[str, float],
        idem: str,
        received_at: int,
    ) -> None:
        self._out.minutes.extend(late_rows(wkey, labels, ts, values, idem))
        self._late_hour(wkey[0], ts, received_at)

    def _late_hour(self, environment: str, ts: int, received_at: int) -> None:
        hour = (environment, ts - ts % HOUR_MS)
        if self._late_hours.get(hour, received_at - 1) < received_at:
            self._late_hours[hour] = received_at

    def _close_through(self, watermark: int) -> None:
        ends, windows, touched, minutes = (
            self._ends,
            self._windows,
            self._touched,
            self._out.minutes,
        )
        while ends[0] - 1 <= watermark and ends[0] != _NEVER:
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
        self._close_through(_NEVER - 2)
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
            watermark=self.watermark,
            clock=self._dedup.clock,
            windows=[WindowState(list(k), acc.to_list()) for k, acc in self._windows.items()],
            touched=[list(k) for k in self._touched],
            dedup=dedup,
        )

    def snapshot(self) -> bytes:
        """The whole state (dedup entries included) as bytes; restore with :meth:`restore`."""
        self._check_drained()
        self._claims = 0
        return self._state(list(self._dedup.entries())).encode()

    def checkpoint(self) -> Checkpoint:
        """Incremental state: the small part as bytes plus the dedup changes since the last
        checkpoint (or snapshot). Restore with :meth:`restore` and all live dedup entries."""
        self._check_drained()
        order = self._dedup.order
        # the newest claims are the tail of the claim order (older ones, if evicted meanwhile,
        # have expired and need not be stored)
        fresh = itertools.islice(order, max(0, len(order) - self._claims), None)
        added = [(e, c, k, t) for t, (e, c, k) in fresh]
        self._claims = 0
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
        engine._watermark = NO_WATERMARK if decoded.watermark is None else decoded.watermark
        engine._dedup = DedupIndex(config.dedup_window_ms, decoded.clock)
        engine._dedup.load([*decoded.dedup, *dedup])
        engine._dedup.evict()
        for window in decoded.windows:
            wkey: WindowKey = tuple(window.key)  # type: ignore[assignment]
            engine._windows[wkey] = WindowAcc.from_list(window.acc)
            engine._register(wkey, wkey[5] + config.window_ms)
        engine._touched = {tuple(k): None for k in decoded.touched}  # type: ignore[misc]
        log.debug(
            "restored partition %s: next_offset=%s windows=%d dedup=%d",
            decoded.partition,
            decoded.next_offset,
            len(engine._windows),
            len(engine._dedup),
        )
        return engine
