"""Properties over generated streams: determinism under restore, totals conserved."""

from __future__ import annotations

import msgspec
from engine_builders import T0, ev, rec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_fixtures import final_minutes

from byoc_platform.events import EventBatch
from streaming.engine import EngineConfig, Output, PartitionEngine

# The dedup window outlasts every generated stream: a key claimed again after expiry AND late
# in the same minute would reuse its late row (late_key = idempotency key), a documented
# limit; expiry itself is covered in test_dedup_window and test_checkpoint_restore.
CONFIG = EngineConfig(dedup_window_ms=7 * 24 * 3_600_000, out_of_orderness_ms=2_000)

event = st.builds(
    lambda key, dt, cust, tokens, model: ev(
        f"k{key}",
        T0 + dt,
        customer=f"c{cust}",
        **({"tokens": tokens} if tokens else {}),
        **({"model": model} if model else {}),
    ),
    key=st.integers(0, 40),  # few keys: many duplicates
    dt=st.integers(0, 6 * 60_000),  # six minutes of event time, in any order: late events
    cust=st.integers(0, 2),
    tokens=st.integers(0, 100),
    model=st.sampled_from(["", "a", "b"]),
)
stream = st.lists(
    st.tuples(st.integers(0, 20_000), st.lists(event, min_size=1, max_size=5)),
    min_size=1,
    max_size=40,
).map(lambda recs: _records(recs))


def _records(raw: list[tuple[int, list]]) -> list[EventBatch]:
    received, out = T0, []
    for step, events in raw:
        received += step
        out.append(rec(received, *events))
    return out


def _rows(out: Output) -> list[dict]:
    return [msgspec.structs.asdict(r) for r in (*out.events, *out.minutes, *out.late_hours)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=stream, split=st.integers(0, 40), drain_every=st.integers(1, 5))
def test_restore_anywhere_gives_the_same_rows(records, split, drain_every) -> None:
    split = min(split, len(records))
    straight = PartitionEngine(0, CONFIG)
    expected: list[dict] = []
    for offset, batch in enumerate(records):
        straight.process(offset, batch)
        if offset % drain_every == 0:
            expected += _rows(straight.drain())
    expected += _rows(straight.flush_all())

    first = PartitionEngine(0, CONFIG)
    got: list[dict] = []
    for offset, batch in enumerate(records[:split]):
        first.process(offset, batch)
        if offset % drain_every == 0:
            got += _rows(first.drain())
    got += _rows(first.drain())
    resumed = PartitionEngine.restore(CONFIG, first.snapshot())
    for offset, batch in enumerate(records):  # a replay from 0: covered offsets are skipped
        resumed.process(offset, batch)
        if offset % drain_every == 0:
            got += _rows(resumed.drain())
    got += _rows(resumed.flush_all())
    assert final_minutes(r for r in got if "minute" in r) == final_minutes(
        r for r in expected if "minute" in r
    )
    events = sorted(r["idempotency_key"] + r["customer_id"] for r in got if "ingest_time" in r)
    assert events == sorted(
        r["idempotency_key"] + r["customer_id"] for r in expected if "ingest_time" in r
    )


@settings(max_examples=60, deadline=None)
@given(records=stream)
def test_every_accepted_event_is_counted_exactly_once(records) -> None:
    engine = PartitionEngine(0, CONFIG)
    for offset, batch in enumerate(records):
        engine.process(offset, batch)
    out = engine.flush_all()
    minutes = final_minutes(msgspec.structs.asdict(m) for m in out.minutes)
    counted = sum(m["count"] for m in minutes.values() if m["metric"] == "")
    tokens = sum(m["sum"] for m in minutes.values() if m["metric"] == "tokens")
    assert counted == len(out.events) == engine.counters.events
    assert tokens == sum(e.values.get("tokens", 0) for e in out.events)
    assert engine.counters.events + engine.counters.duplicates == sum(
        len(b.events) for b in records
    )
