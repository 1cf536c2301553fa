"""Two processor processes in one consumer group split the partitions; when one is SIGKILLed the
other takes its partitions over from the shared checkpoints, and the results stay exact."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.stack_fixtures import Stack, free_port
from tests.streaming.processor.harness import (
    EventProducer,
    ProcessorProcess,
    event_rows,
    expected_results,
    isolated_settings,
    minute_aggregates,
    wait_checkpointed,
)
from tests.streaming.processor.workload import workload

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _partitions(proc: ProcessorProcess) -> set[int]:
    ready = proc.readiness() or {}
    return set(ready.get("partitions", []))


def _wait_split(a: ProcessorProcess, b: ProcessorProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a.check_alive()
        b.check_alive()
        pa, pb = _partitions(a), _partitions(b)
        if pa and pb and not pa & pb and pa | pb == {0, 1, 2, 3}:
            return
        time.sleep(0.2)
    raise AssertionError(f"no split: a={_partitions(a)} b={_partitions(b)}")


def test_two_instances_split_partitions_and_survivor_takes_over(
    infra: Stack, tmp_path: Path
) -> None:
    s = isolated_settings(infra.settings, tmp_path / "stream")
    s_b = s.model_copy(deep=True)
    s_b.ports.stream = free_port()
    environment = f"env-split-{uuid.uuid4().hex[:8]}"
    batches = list(workload(environment, 160, 50, seed=11, customers=16))
    half = len(batches) // 2
    producer = EventProducer(s)

    a = ProcessorProcess(s, name="a").start()
    b = ProcessorProcess(s_b, name="b").start()
    try:
        a.wait_ready()
        b.wait_ready()
        _wait_split(a, b)
        for batch in batches[:half]:
            producer.send(batch)
        wait_checkpointed(s, producer.flush().end_offsets(), alive=a.check_alive)
        assert a.metric("byoc_stream_events_durable_total") > 0
        assert b.metric("byoc_stream_events_durable_total") > 0

        assert a.kill() == -9
        for batch in batches[half:]:
            producer.send(batch)
        produced = producer.flush()
        wait_checkpointed(s, produced.end_offsets(), timeout_s=120, alive=b.check_alive)
        assert _partitions(b) == {0, 1, 2, 3}
        assert b.stop() == 0, b.log_tail()
    finally:
        a.stop()
        b.stop()

    expected = expected_results(produced)
    ch = infra.clickhouse()
    db = s.clickhouse.database
    assert len(event_rows(ch, db, environment)) == len(expected.unique)
    assert len(event_rows(ch, db, environment, final=False)) == len(expected.unique)
    assert minute_aggregates(ch, db, environment) == expected.minutes
