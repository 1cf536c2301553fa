"""usage_minute rows: window keys, the count metric and one metric per numeric dimension."""

from __future__ import annotations

from engine_builders import T0, ev, rec

from byoc_platform.events import labels_key, split_dimensions
from streaming.engine import EngineConfig, PartitionEngine, describe


def test_count_and_numeric_metrics_of_one_window() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(
        0,
        rec(
            T0,
            ev("a", T0 + 3_000, model="m", tokens=10, cached=True),
            ev("b", T0 + 1_000, model="m", tokens=4.5, cached=True, ms=2),
            ev("c", T0 + 2_000, model="m", cached=True),
        ),
    )
    rows = {m.metric: m for m in engine.flush_all().minutes}
    assert set(rows) == {"", "tokens", "ms"}
    count, tokens, ms = rows[""], rows["tokens"], rows["ms"]
    assert (count.count, count.sum, count.min, count.max) == (3, 3.0, 1.0, 1.0)
    assert (count.first_event_time, count.last_event_time) == (T0 + 1_000, T0 + 3_000)
    assert (tokens.count, tokens.sum, tokens.min, tokens.max) == (2, 14.5, 4.5, 10.0)
    assert (tokens.first_event_time, tokens.last_event_time) == (T0 + 1_000, T0 + 3_000)
    assert (ms.count, ms.sum, ms.first_event_time) == (1, 2.0, T0 + 1_000)
    assert count.dimensions_key == '{"cached":"true","model":"m"}'
    assert count.labels == {"model": "m", "cached": "true"}
    assert all(r.minute == T0 and r.late_key == "" and r.version == r.count for r in rows.values())


def test_window_key_separates_resource_name_and_dimension_set() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(
        0,
        rec(
            T0,
            ev("a", T0, resource="r1"),
            ev("b", T0, resource=None),
            ev("c", T0, resource=""),
            ev("d", T0, name="other"),
            ev("e", T0, model="x"),
            ev("f", T0, model="x", tokens=3),
        ),
    )
    count_rows = [m for m in engine.flush_all().minutes if m.metric == ""]
    keys = {(m.resource_id, m.event_name, m.dimensions_key): m.count for m in count_rows}
    assert keys == {
        ("r1", "tokens", "{}"): 1,
        ("", "tokens", "{}"): 2,  # no resource and '' are the same resource
        ("", "other", "{}"): 1,
        ("", "tokens", '{"model":"x"}'): 2,  # numeric dims are not part of the set
    }


def test_describe_agrees_with_the_event_contract() -> None:
    dims = {"b": "x", "a": True, "n": 3, "f": 0.5, "z": False, "é": 'q"\\'}
    labels, values = split_dimensions(dims)
    described = describe(dims)
    assert described.labels == labels and described.values == values
    assert described.labels_key == labels_key(labels)
    assert described.json == '{"a":true,"b":"x","f":0.5,"n":3,"z":false,"é":"q\\"\\\\"}'
    assert describe({}).labels_key == labels_key({}) == "{}"


def test_event_rows_carry_ingest_time_and_original_dimensions() -> None:
    engine = PartitionEngine(0, EngineConfig())
    engine.process(7, rec(T0 + 42, ev("a", T0, resource="r", z=1, a="s")))
    (row,) = engine.drain().events
    assert (row.event_time, row.ingest_time, row.resource_id) == (T0, T0 + 42, "r")
    assert (row.labels, row.values, row.dimensions) == ({"a": "s"}, {"z": 1.0}, '{"a":"s","z":1}')
