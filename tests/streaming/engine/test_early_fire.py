"""Early-fired snapshots: versions grow with content, the final row is the newest version."""

from __future__ import annotations

from engine_builders import T0, ev, rec
from stream_fixtures import final_minutes, load_partitions, run_engine

from streaming.engine import EngineConfig, PartitionEngine


def test_snapshot_versions_grow_with_the_window() -> None:
    engine = PartitionEngine(0, EngineConfig())
    seen: list[tuple[int, int]] = []
    for n in range(5):
        engine.process(n, rec(T0, ev(f"k{n}", T0 + n * 1_000, tokens=n)))
        out = engine.drain()
        (row,) = [m for m in out.minutes if m.metric == ""]
        seen.append((row.version, row.count))
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]


def test_only_windows_touched_since_the_last_drain_are_snapshotted() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0, customer="c1"), ev("b", T0, customer="c2")))
    assert {m.customer_id for m in engine.drain().minutes} == {"c1", "c2"}
    engine.process(1, rec(T0, ev("c", T0 + 1, customer="c2")))
    assert {m.customer_id for m in engine.drain().minutes} == {"c2"}
    assert engine.drain().minutes == []


def test_drain_without_open_windows_holds_snapshots_back() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(0, rec(T0, ev("a", T0)))
    assert engine.drain(include_open=False).minutes == []
    assert [m.version for m in engine.drain().minutes] == [1]  # still touched


def test_final_state_does_not_depend_on_drain_cadence() -> None:
    partitions = load_partitions()
    reference = final_minutes(run_engine(partitions)["usage_minute"])
    for every in (1, 7, 50):
        rows = run_engine(partitions, drain_every=every)["usage_minute"]
        assert len(rows) > len(reference)  # snapshots were emitted ...
        assert final_minutes(rows) == reference  # ... and the newest one is the final row
