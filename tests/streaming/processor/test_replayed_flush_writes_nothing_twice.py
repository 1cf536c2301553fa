"""Deterministic faults on the write path: a lost insert acknowledgement, and a crash in the
middle of a flush. Both are replayed with the same dedup tokens, so not even the raw tables
(without FINAL) hold a row twice, and the aggregates stay exact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack_fixtures import Stack
from tests.streaming.processor.harness import (
    ClickHouseFaultProxy,
    EventProducer,
    ProcessorProcess,
    event_rows,
    expected_results,
    isolated_settings,
    minute_aggregates,
    pending_intents,
    wait_checkpointed,
)
from tests.streaming.processor.workload import workload

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(infra: Stack) -> Iterator[ClickHouseFaultProxy]:
    assert infra.settings.clickhouse.url
    proxy = ClickHouseFaultProxy(infra.settings.clickhouse.url)
    yield proxy
    proxy.close()


def _assert_exact(infra: Stack, environment: str, produced: object) -> None:
    expected = expected_results(produced)  # type: ignore[arg-type]
    ch = infra.clickhouse()
    db = infra.settings.clickhouse.database
    assert len(event_rows(ch, db, environment, final=False)) == len(expected.unique)
    assert len(event_rows(ch, db, environment)) == len(expected.unique)
    assert minute_aggregates(ch, db, environment) == expected.minutes


def test_insert_whose_ack_is_lost_is_retried_and_stored_once(
    infra: Stack, proxy: ClickHouseFaultProxy, tmp_path: Path
) -> None:
    s = isolated_settings(infra.settings, tmp_path / "stream")
    s.clickhouse.url = proxy.url
    environment = f"env-ack-{uuid.uuid4().hex[:8]}"
    proxy.lose_acks(3)  # the first three blocks land but their answers are lost
    proc = ProcessorProcess(s).start()
    try:
        proc.wait_ready()
        producer = EventProducer(s)
        for batch in workload(environment, 40, 50, seed=5, customers=8):
            producer.send(batch)
        produced = producer.flush()
        wait_checkpointed(s, produced.end_offsets(), alive=proc.check_alive)
        assert proxy.acks_lost == 3
        assert proc.metric("byoc_stream_write_retries_total") >= 3
    finally:
        proc.stop()
    _assert_exact(infra, environment, produced)


def test_crash_in_the_middle_of_a_flush_is_replayed_as_the_same_flush(
    infra: Stack, proxy: ClickHouseFaultProxy, tmp_path: Path
) -> None:
    s = isolated_settings(infra.settings, tmp_path / "stream")
    s.clickhouse.url = proxy.url
    environment = f"env-mid-{uuid.uuid4().hex[:8]}"
    batches = list(workload(environment, 60, 50, seed=9, customers=8))
    producer = EventProducer(s)
    first = ProcessorProcess(s, name="first").start()
    try:
        first.wait_ready()
        for batch in batches[:30]:
            producer.send(batch)
        wait_checkpointed(s, producer.flush().end_offsets(), alive=first.check_alive)
        # The next flush gets its usage_events block in, then hangs on usage_minute: kill it
        # there, with the intent recorded and half of the flush written.
        proxy.block_after(1)
        for batch in batches[30:]:
            producer.send(batch)
        produced = producer.flush()
        assert proxy.blocked.wait(60), first.log_tail()
        assert pending_intents(s), "the flush in progress must be recorded as an intent"
        assert first.kill() == -9
    finally:
        first.stop()
    forwarded_before_crash = proxy.inserts_forwarded
    proxy.release()

    second = ProcessorProcess(s, name="second").start()
    try:
        second.wait_ready()
        wait_checkpointed(s, produced.end_offsets(), alive=second.check_alive)
        assert "of flush" in second.log_text()  # it resumed at the recorded boundary
        assert not pending_intents(s)
    finally:
        assert second.stop() == 0
    assert proxy.inserts_forwarded > forwarded_before_crash
    _assert_exact(infra, environment, produced)
