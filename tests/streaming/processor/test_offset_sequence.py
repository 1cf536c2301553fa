"""The processor takes each partition's offsets in sequence: a record past the expected offset
is re-fetched once from it (a record fetched before a rebalance, or a hole in the log).

Unit test of the decision with a recording stand-in for the consumer's seek; the real consumer
path runs in the fault run (tests/faults), where broker and S3 kills leave such gaps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streaming.processor.processor import StreamProcessor
from tests.stack_fixtures import test_settings


class SeekRecorder:
    def __init__(self) -> None:
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))


def processor(tmp_path: Path) -> tuple[StreamProcessor, SeekRecorder]:
    p = StreamProcessor(test_settings(tmp_path / "data"), instance_id="unit")
    consumer = SeekRecorder()
    p._consumer = consumer
    return p, consumer


def next_batch(p: StreamProcessor) -> None:
    p._batch_no += 1


def test_a_record_past_the_expected_offset_is_fetched_again(tmp_path: Path) -> None:
    p, consumer = processor(tmp_path)
    p._expect[2] = 10  # restored checkpoint: resume at 10
    next_batch(p)
    assert p._in_sequence(2, 14) is False  # e.g. fetched before the rebalance
    assert consumer.seeks == [(2, 10)]
    assert p._in_sequence(2, 15) is False  # same batch: also fetched before the seek
    assert consumer.seeks == [(2, 10)]
    next_batch(p)
    assert p._in_sequence(2, 10) is True  # the re-fetch starts where it should
    assert p._in_sequence(2, 11) is True
    assert p._expect[2] == 12
    assert p.metrics.offset_gaps._value.get() == 1
    p.store.close()


def test_a_gap_still_there_after_the_refetch_is_a_hole_and_is_passed(tmp_path: Path) -> None:
    p, consumer = processor(tmp_path)
    p._expect[0] = 5
    next_batch(p)
    assert p._in_sequence(0, 8) is False
    next_batch(p)
    assert p._in_sequence(0, 8) is True  # the broker has nothing at 5-7
    assert consumer.seeks == [(0, 5)]
    assert p._expect[0] == 9
    # A later gap is checked again, on its own.
    next_batch(p)
    assert p._in_sequence(0, 12) is False
    assert consumer.seeks == [(0, 5), (0, 9)]
    p.store.close()


def test_covered_and_first_offsets_pass_without_a_fetch(tmp_path: Path) -> None:
    p, consumer = processor(tmp_path)
    next_batch(p)
    assert p._in_sequence(1, 40) is True  # nothing checkpointed: start wherever the log does
    assert p._expect[1] == 41
    assert p._in_sequence(1, 39) is True  # already covered: the engine skips it
    assert p._expect[1] == 41
    assert p._in_sequence(3, 0) is True
    assert consumer.seeks == []
    p.store.close()
