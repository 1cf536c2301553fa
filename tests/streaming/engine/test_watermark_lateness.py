"""Per-partition watermark, window completion and late events (which are never dropped)."""

from __future__ import annotations

from engine_builders import T0, ev, rec

from streaming.engine import EngineConfig, LateHourRow, PartitionEngine

MIN = 60_000


def test_out_of_order_within_the_bound_is_on_time() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0 + 64_000)))  # watermark T0+59 000
    engine.process(1, rec(T0, ev("b", T0 + 59_000)))  # window ends T0+60 000: still open
    out = engine.flush_all()
    counts = {(m.minute, m.late_key): m.count for m in out.minutes}
    assert counts == {(T0, ""): 1, (T0 + MIN, ""): 1}
    assert engine.counters.late == 0


def test_window_closes_when_watermark_reaches_its_last_millisecond() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0 + 10)))
    engine.process(1, rec(T0, ev("b", T0 + MIN - 1 + 5_000 - 1)))  # watermark = end - 2
    assert engine.drain(include_open=False).closed_windows == 0
    assert engine.open_windows == 2
    engine.process(2, rec(T0, ev("c", T0 + MIN - 1 + 5_000)))  # watermark = end - 1
    out = engine.drain(include_open=False)
    assert out.closed_windows == 1
    assert [(m.minute, m.count, m.version) for m in out.minutes] == [(T0, 1, 1)]
    # the closed window's state is gone: its events are now late
    engine.process(3, rec(T0 + 1, ev("d", T0 + 20)))
    late = engine.drain(include_open=False).minutes
    assert [(m.minute, m.late_key, m.count) for m in late] == [(T0, "d", 1)]


def test_late_event_becomes_its_own_rows_and_marks_its_hour() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0 + 10 * MIN)))
    engine.process(1, rec(T0 + 5, ev("late", T0 + 30_000, model="m", tokens=7, ms=1.5)))
    out = engine.drain()
    assert [e.idempotency_key for e in out.events] == ["a", "late"]  # written like any event
    late = [m for m in out.minutes if m.late_key]
    assert [(m.metric, m.count, m.sum, m.min, m.max, m.version) for m in late] == [
        ("", 1, 1.0, 1.0, 1.0, 1),
        ("ms", 1, 1.5, 1.5, 1.5, 1),
        ("tokens", 1, 7.0, 7.0, 7.0, 1),
    ]
    assert {(m.minute, m.first_event_time, m.last_event_time) for m in late} == {
        (T0, T0 + 30_000, T0 + 30_000)
    }
    assert out.late_hours == [LateHourRow("prod", T0 - T0 % 3_600_000, T0 + 5)]


def test_duplicates_move_neither_watermark_nor_windows() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0)))
    engine.process(1, rec(T0, ev("a", T0 + 99 * MIN)))  # duplicate with a far event time
    assert engine.watermark == T0 - 5_000
    engine.process(2, rec(T0, ev("b", T0 + 1)))
    assert engine.counters.late == 0


def test_watermark_is_per_partition() -> None:
    """Another partition's progress never makes this partition's events late."""
    p0, p1 = PartitionEngine(0, EngineConfig()), PartitionEngine(1, EngineConfig())
    p1.process(0, rec(T0, ev("x", T0 + 60 * MIN)))
    p0.process(0, rec(T0, ev("a", T0)))
    assert p0.counters.late == 0 and p0.watermark == T0 - 5_000


def test_watermark_is_shared_by_customers_of_one_partition() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0 + 3 * MIN, customer="c1")))
    engine.process(1, rec(T0, ev("b", T0, customer="c2")))
    assert engine.counters.late == 1


def test_an_event_received_after_its_hour_ended_marks_that_hour_even_on_time() -> None:
    """An idle partition's watermark lags: a back-dated event ahead of it is on time, but its
    hour's rollup may have run already; without a late_hours row nothing rolled it up again
    (F73)."""
    hour = 3_600_000
    start = T0 - T0 % hour
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(start + 5 * MIN, ev("a", start + 5 * MIN)))
    assert engine.drain().late_hours == []  # received within its own hour
    # The partition idles; an hour and a half later an SDK flushes events of the first hour.
    received = start + hour + 30 * MIN
    engine.process(1, rec(received, ev("b", start + 50 * MIN), ev("c", start + hour + 29 * MIN)))
    out = engine.drain()
    assert engine.counters.late == 0  # ahead of the watermark: on time
    assert [(m.minute, m.count) for m in out.minutes if m.late_key] == []
    assert out.late_hours == [LateHourRow("prod", start, received)]  # not the open hour
