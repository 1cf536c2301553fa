"""Checkpoint/restore: a restored engine continues exactly as if it had never stopped."""

from __future__ import annotations

import msgspec
import pytest
from engine_builders import T0, ev, rec
from stream_fixtures import load_partitions

from byoc_platform.events import encode_batch
from streaming.engine import (
    EngineConfig,
    InvalidRecord,
    Output,
    PartitionEngine,
    PendingOutputError,
    StateError,
    StreamEngine,
)

CONFIG = EngineConfig(dedup_window_ms=120_000)  # short, so expiry happens in the fixture


def rows(out: Output) -> list[object]:
    return [msgspec.structs.asdict(r) for r in (*out.events, *out.minutes, *out.late_hours)]


def run_straight(records) -> list[object]:
    engine = PartitionEngine(0, CONFIG)
    got: list[object] = []
    for offset, batch in records:
        engine.process(offset, batch)
        got += rows(engine.drain())
    return got + rows(engine.flush_all())


@pytest.mark.parametrize("incremental", [False, True], ids=["snapshot", "checkpoint"])
def test_restore_midway_equals_one_run(incremental: bool) -> None:
    records = load_partitions()[0]
    straight = run_straight(records)
    for split in (1, len(records) // 3, len(records) // 2, len(records) - 1):
        engine = PartitionEngine(0, CONFIG)
        got: list[object] = []
        stored_dedup: dict[tuple[str, str, str], int] = {}
        for offset, batch in records[:split]:
            engine.process(offset, batch)
            got += rows(engine.drain())
            if incremental:  # what the wiring stores in SQLite after every batch
                cp = engine.checkpoint()
                for env, cust, key, seen in cp.dedup_added:
                    stored_dedup[(env, cust, key)] = seen
                if cp.dedup_evict_through is not None:
                    stored_dedup = {
                        k: t for k, t in stored_dedup.items() if t > cp.dedup_evict_through
                    }
                state = cp.state
        if incremental:
            dedup = [(*k, t) for k, t in stored_dedup.items()]
            restored = PartitionEngine.restore(CONFIG, state, dedup)
        else:
            restored = PartitionEngine.restore(CONFIG, engine.snapshot())
        assert restored.next_offset == records[split - 1][0] + 1
        for offset, batch in records[split:]:
            restored.process(offset, batch)
            got += rows(restored.drain())
        got += rows(restored.flush_all())
        assert got == straight, f"diverged after restoring at record {split}"


def test_replayed_offsets_are_skipped() -> None:
    engine = PartitionEngine(0, CONFIG)
    engine.process(0, rec(T0, ev("a", T0)))
    engine.process(1, rec(T0, ev("b", T0)))
    restored = PartitionEngine.restore(CONFIG, (engine.drain(), engine.snapshot())[1])
    assert restored.process(1, rec(T0, ev("c", T0))) is False  # already in the state
    assert restored.process(2, rec(T0, ev("d", T0))) is True
    assert [e.idempotency_key for e in restored.drain().events] == ["d"]
    assert restored.counters.skipped_records == 1


def test_state_requires_a_drain_first() -> None:
    engine = PartitionEngine(0, CONFIG)
    engine.process(0, rec(T0, ev("a", T0)))
    with pytest.raises(PendingOutputError):
        engine.snapshot()
    with pytest.raises(PendingOutputError):
        engine.checkpoint()
    engine.drain()
    assert engine.checkpoint().dedup_added == [("prod", "c1", "a", T0)]
    assert engine.checkpoint().dedup_added == []  # incremental: only what is new


def test_state_size_is_bounded() -> None:
    engine = PartitionEngine(0, EngineConfig(dedup_window_ms=10_000))
    sizes = []
    for n in range(300):
        t = T0 + n * 1_000
        engine.process(n, rec(t, *(ev(f"k{n}-{i}", t, tokens=i) for i in range(4))))
        engine.drain()
        sizes.append(len(engine.snapshot()))
    assert max(sizes[100:]) < 1.2 * min(sizes[100:])  # flat once the window is full


def test_unreadable_state_is_a_clear_error() -> None:
    with pytest.raises(StateError, match="unreadable"):
        PartitionEngine.restore(CONFIG, b"not json")
    state = PartitionEngine(0, CONFIG).snapshot().replace(b'"v":1', b'"v":99')
    with pytest.raises(StateError, match="version 99"):
        PartitionEngine.restore(CONFIG, state)


def test_stream_engine_assigns_processes_and_checkpoints_partitions() -> None:
    engine = StreamEngine(CONFIG)
    engine.assign(0)
    engine.assign(1)
    engine.process_value(0, 0, encode_batch(rec(T0, ev("a", T0))))
    engine.process(1, 0, rec(T0, ev("a", T0, customer="c2")))
    drained = engine.drain()
    assert sorted(drained) == [0, 1] and all(len(o.events) == 1 for o in drained.values())
    state = engine.partitions[1].snapshot()
    engine.revoke(1)
    with pytest.raises(KeyError, match="not assigned"):
        engine.process(1, 1, rec(T0, ev("b", T0)))
    with pytest.raises(ValueError, match="state of partition 1"):
        engine.assign(2, state)
    assert engine.assign(1, state).next_offset == 1
    assert engine.checkpoint(0).next_offset == 1


def test_undecodable_record_is_refused_without_touching_state() -> None:
    engine = PartitionEngine(3, CONFIG)
    engine.process(0, rec(T0, ev("a", T0)))
    with pytest.raises(InvalidRecord, match="partition 3 offset 1"):
        engine.process_value(1, b'{"v":1,"environment":"prod"}')  # no receivedAt/events
    assert engine.next_offset == 1
    assert engine.process(1, rec(T0, ev("b", T0))) is True
