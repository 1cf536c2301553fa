"""First-occurrence dedup of (environment, customer_id, idempotency_key), bounded by a TTL.

Time is RECEIVE time (the records' receivedAt), never the wall clock, so a replay of the
same records decides exactly as the first run. The index's clock is the highest receivedAt
seen so far; an entry first seen at ``t`` is live while ``clock - t < window`` and is evicted
(state stays bounded) once the clock has moved ``window`` past it: then the key counts again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

DedupKey = tuple[str, str, str]  # (environment, customer_id, idempotency_key)


class DedupIndex:
    """``seen`` maps key -> first-seen time; ``order`` lists (time, key) in claim order.

    Claims are stamped with the monotone clock, so ``order`` is sorted and eviction pops
    its front in amortised O(1) (popping a dict's front instead degrades: CPython scans
    the deleted slots). The engine's hot loop reads ``seen`` inline with :meth:`claim`'s rule.
    """

    __slots__ = ("_clock", "order", "seen", "window_ms")

    def __init__(self, window_ms: int, clock: int | None = None) -> None:
        self.window_ms = window_ms
        self.seen: dict[DedupKey, int] = {}
        self.order: deque[tuple[int, DedupKey]] = deque()
        self._clock = clock

    @property
    def clock(self) -> int | None:
        return self._clock

    def __len__(self) -> int:
        return len(self.seen)

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
        order, seen = self.order, self.seen
        while order and order[0][0] <= horizon:
            first, key = order.popleft()
            if seen.get(key) == first:  # not re-claimed since
                del seen[key]

    def claim(self, key: DedupKey) -> bool:
        """True if ``key`` is new (or its entry expired): it is then recorded at the clock."""
        clock = self._clock
        assert clock is not None, "advance() before claim()"
        first = self.seen.get(key)
        if first is not None and clock - first < self.window_ms:
            return False
        self.seen[key] = clock
        self.order.append((clock, key))
        return True

    def entries(self) -> Iterator[tuple[str, str, str, int]]:
        for (environment, customer, idem), first in self.seen.items():
            yield environment, customer, idem, first

    def load(self, entries: Iterable[tuple[str, str, str, int]]) -> None:
        """Replace the contents (entries in any order)."""
        ordered = sorted(entries, key=lambda entry: entry[3])
        self.seen = {(e, c, k): t for e, c, k, t in ordered}
        self.order = deque(((t, (e, c, k)) for e, c, k, t in ordered))
