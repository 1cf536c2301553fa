"""The SQLite checkpoint store: atomic state + dedup segments, TTL deletion, intents, fencing."""

from __future__ import annotations

from pathlib import Path

from byoc_platform.events import SCHEMA_VERSION, EventBatch, UsageEvent
from streaming.engine import EngineConfig, StreamEngine
from streaming.processor.checkpoints import CheckpointStore, Pending

CONFIG = EngineConfig(dedup_window_ms=10_000)


def _batch(received_at: int, keys: list[str]) -> EventBatch:
    events = [
        UsageEvent(customerId="c", eventName="e", idempotencyKey=k, timestamp=received_at)
        for k in keys
    ]
    return EventBatch(SCHEMA_VERSION, "env", received_at, events)


def test_restore_from_checkpoint_decides_duplicates_like_the_original(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.db", "g/t", owner="one")
    engine = StreamEngine(CONFIG)
    restored = store.claim(0)
    assert restored.next_offset is None and restored.state is None
    engine.assign(0, restored.state, restored.dedup)
    engine.process(0, 0, _batch(1000, ["a", "b"]))
    engine.drain()
    assert store.commit([engine.checkpoint(0)]) == set()

    other = CheckpointStore(tmp_path / "cp.db", "g/t", owner="two")  # another instance
    again = other.claim(0)
    assert again.next_offset == 1
    assert sorted(e[2] for e in again.dedup) == ["a", "b"]
    engine2 = StreamEngine(CONFIG)
    engine2.assign(0, again.state, again.dedup)
    engine2.process(0, 1, _batch(2000, ["a", "c"]))  # "a" is a duplicate after the move
    assert [r.idempotency_key for r in engine2.drain()[0].events] == ["c"]


def test_segments_are_deleted_once_the_window_has_passed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.db", "g/t", owner="one")
    engine = StreamEngine(CONFIG)
    engine.assign(0, store.claim(0).state)
    for offset, (received_at, keys) in enumerate(
        [(1000, ["a", "b"]), (5000, ["c"]), (12_000, ["d"]), (30_000, ["e"])]
    ):
        engine.process(0, offset, _batch(received_at, keys))
        engine.drain()
        store.commit([engine.checkpoint(0)])
        if offset == 2:  # clock 12000: segment of 1000 expired (window 10 s), 5000 not yet
            assert (store.stats().segments, store.stats().entries) == (2, 2)
    stats = store.stats()
    assert (stats.segments, stats.entries) == (1, 1)  # only "e" is live at clock 30000
    assert stats.oldest_first_seen == 30_000


def test_intent_is_returned_to_the_next_owner_and_cleared_by_the_commit(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.db", "g/t", owner="one")
    engine = StreamEngine(CONFIG)
    engine.assign(3, store.claim(3).state)
    engine.process(3, 0, _batch(1000, ["a"]))
    engine.drain()
    checkpoint = engine.checkpoint(3)
    assert store.record_intent({3: (0, 0)}, "3:0-0") == set()
    # Crash here: the next owner learns where the half-written batch ended.
    assert CheckpointStore(tmp_path / "cp.db", "g/t", owner="x").claim(3).pending == Pending(
        0, 0, "3:0-0"
    )
    # The old owner has been fenced by that claim: its commit is refused.
    assert store.commit([checkpoint]) == {3}
    assert store.record_intent({3: (1, 1)}, "3:1-1") == {3}

    store2 = CheckpointStore(tmp_path / "cp.db", "g/t", owner="y")
    restored = store2.claim(3)
    assert restored.next_offset is None and restored.pending == Pending(0, 0, "3:0-0")
    assert store2.commit([checkpoint]) == set()
    assert store2.claim(3).pending is None
    assert store2.claim(3).next_offset == 1


def test_streams_are_separate(tmp_path: Path) -> None:
    one = CheckpointStore(tmp_path / "cp.db", "g/topic-a", owner="o")
    two = CheckpointStore(tmp_path / "cp.db", "g/topic-b", owner="o")
    engine = StreamEngine(CONFIG)
    engine.assign(0, one.claim(0).state)
    engine.process(0, 41, _batch(1000, ["a"]))
    engine.drain()
    one.commit([engine.checkpoint(0)])
    assert one.next_offsets() == {0: 42}
    assert two.claim(0).next_offset is None
