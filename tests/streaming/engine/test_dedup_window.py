"""Dedup: first occurrence wins inside the window (receive time); then the key counts again."""

from __future__ import annotations

from engine_builders import T0, ev, rec

from streaming.engine import EngineConfig, PartitionEngine

DAY = 24 * 3600 * 1000


def keys(engine: PartitionEngine) -> list[tuple[str, int]]:
    return [(r.idempotency_key, r.event_time) for r in engine.drain().events]


def test_duplicate_inside_window_is_dropped_even_with_a_different_body() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("k1", T0, tokens=5)))
    engine.process(1, rec(T0 + DAY, ev("k1", T0 + 999, tokens=500), ev("k2", T0)))
    assert keys(engine) == [("k1", T0), ("k2", T0)]
    assert engine.counters.duplicates == 1


def test_duplicate_inside_one_record_is_dropped() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("k1", T0), ev("k1", T0 + 1)))
    assert keys(engine) == [("k1", T0)]


def test_key_is_scoped_by_environment_and_customer() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("k1", T0), ev("k1", T0, customer="c2")))
    engine.process(1, rec(T0, ev("k1", T0), environment="staging"))
    assert len(engine.drain().events) == 3


def test_key_counts_again_after_the_window_measured_on_receive_time() -> None:
    engine = PartitionEngine(0, EngineConfig(dedup_window_ms=10_000))
    engine.process(0, rec(T0, ev("k1", T0)))
    engine.process(1, rec(T0 + 9_999, ev("k1", T0)))  # 9.999 s after first seen: duplicate
    # event time far in the future does not expire anything: only receive time does
    engine.process(2, rec(T0 + 9_999, ev("k1", T0 + 10 * DAY)))
    assert keys(engine) == [("k1", T0)]
    engine.process(3, rec(T0 + 10_000, ev("k1", T0 + 5)))  # window elapsed: counts again
    engine.process(4, rec(T0 + 15_000, ev("k1", T0 + 6)))  # ... and is first seen anew
    assert keys(engine) == [("k1", T0 + 5)]


def test_receive_clock_never_goes_back() -> None:
    """A record with an older receivedAt (producer clock skew) is judged by the partition's
    receive clock, so a replay decides alike whatever the skew."""
    engine = PartitionEngine(0, EngineConfig(dedup_window_ms=10_000))
    engine.process(0, rec(T0, ev("k1", T0)))
    engine.process(1, rec(T0 + 20_000, ev("other", T0)))  # clock moves to +20 s: k1 expired
    engine.process(2, rec(T0 + 1_000, ev("k1", T0 + 1)))  # skewed record: k1 counts again
    assert ("k1", T0 + 1) in keys(engine)


def test_state_is_bounded_by_the_window() -> None:
    engine = PartitionEngine(0, EngineConfig(dedup_window_ms=60_000))
    sizes = []
    for n in range(600):  # one record per second, 5 new keys each
        t = T0 + n * 1_000
        engine.process(n, rec(t, *(ev(f"k{n}-{i}", t) for i in range(5))))
        engine.drain()
        sizes.append(engine.dedup_entries)
    assert max(sizes) <= 61 * 5  # never more than a window's worth of keys
    assert sizes[-1] == 60 * 5
