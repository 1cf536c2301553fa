"""First-occurrence dedup of (environment, customer_id, idempotency_key), bounded by a TTL.

Time is RECEIVE time (the records' receivedAt), never the wall clock, so a replay of the
same records decides exactly as the first run. The index's clock is the highest receivedAt
seen so far; an entry first seen at ``t`` is live while ``clock - t < window`` and is evicted
(state stays bounded) once the clock has moved ``window`` past it: then the key counts again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

DedupKey = tuple[str, str, str]  # (environment, customer_id, idempotency_key)


class DedupIndex:
    """Keys in first-seen order (a dict keeps insertion order), so eviction pops the front."""

    __slots__ = ("_clock", "_seen", "window_ms")

    def __init__(self, window_ms: int, clock: int | None = None) -> None:
        self.window_ms = window_ms
        self._seen: dict[DedupKey, int] = {}
        self._clock = clock

    @property
    def clock(self) -> int | None:
        return self._clock

    def __len__(self) -> int:
        return len(self._seen)

    def advance(self, received_at: int) -> None:
        """Move the receive clock forward (never back) and evict entries past the window."""
        if self._clock is not None and received_at <= self._clock:
            return
        self._clock = received_at
        self.evict()

    def evict(self) -> None:
        """Drop every entry the clock has moved ``window_ms`` past."""
        if self._clock is None:
            return
        horizon = self._clock - self.window_ms
        seen = self._seen
        # Front-first eviction; receivedAt is near-monotone per partition, so this is
        # amortised O(1). An entry stuck behind a newer one is still judged by its own time.
        while seen:
            key = next(iter(seen))
            if seen[key] > horizon:
                break
            del seen[key]

    def claim(self, key: DedupKey) -> bool:
        """True if ``key`` is new (or its entry expired): it is then recorded at the clock."""
        clock = self._clock
        assert clock is not None, "advance() before claim()"
        seen = self._seen
        first = seen.get(key)
        if first is not None:
            if clock - first < self.window_ms:
                return False
            del seen[key]  # expired but not yet evicted: re-insert at the back
        seen[key] = clock
        return True

    def entries(self) -> Iterator[tuple[str, str, str, int]]:
        for (environment, customer, idem), first in self._seen.items():
            yield environment, customer, idem, first

    def load(self, entries: Iterable[tuple[str, str, str, int]]) -> None:
        self._seen = {(e, c, k): t for e, c, k, t in entries}
