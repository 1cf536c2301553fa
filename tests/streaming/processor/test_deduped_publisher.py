"""The usage.deduped publisher resends what failed and replaces a producer that hit a fatal
error without losing a record (unit test with a fake producer; the real broker path is covered
by the processor's integration tests)."""

from __future__ import annotations

import threading
from typing import Any

from streaming.processor.deduped import DedupedPublisher


class _Error:
    def __init__(self, fatal: bool) -> None:
        self._fatal = fatal

    def fatal(self) -> bool:
        return self._fatal

    def name(self) -> str:
        return "_FATAL" if self._fatal else "UNKNOWN_SERVER_ERROR"


class _Message:
    """A delivered record: only a report WITH an offset counts as durable."""

    def __init__(self, offset: int | None) -> None:
        self._offset = offset

    def offset(self) -> int | None:
        return self._offset


class _FakeProducer:
    """Accepts records; the first ``fail`` deliveries fail (fatally if ``fatal``)."""

    def __init__(self, log: list[bytes], fail: int, fatal: bool, no_offset: int = 0) -> None:
        self.log = log
        self.fail = fail
        self.fatal = fatal
        self.no_offset = no_offset  # deliveries reported without an offset (not in the log)
        self.pending: list[tuple[bytes, Any]] = []
        self.produced = 0

    def produce(
        self, topic: str, value: bytes, key: bytes, timestamp: int, on_delivery: Any
    ) -> None:
        self.pending.append((value, on_delivery))
        self.produced += 1

    def poll(self, timeout: float = 0) -> int:
        return self.flush(timeout)

    def flush(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for value, callback in pending:
            if self.fail > 0:
                self.fail -= 1
                callback(_Error(self.fatal), None)
            elif self.no_offset > 0:
                self.no_offset -= 1
                callback(None, _Message(None))
            else:
                self.log.append(value)
                callback(None, _Message(len(self.log) - 1))
        return 0

    def purge(self) -> None:
        for _, callback in self.pending:
            callback(_Error(False), None)
        self.pending = []


def _publisher(producers: list[_FakeProducer]) -> DedupedPublisher:
    made = iter(producers)
    return DedupedPublisher(lambda: next(made), "usage.deduped", threading.Event())


def test_failed_deliveries_are_resent_until_acknowledged() -> None:
    acked: list[bytes] = []
    publisher = _publisher([_FakeProducer(acked, fail=2, fatal=False)])
    records = [(b"k", f"v{i}".encode(), i) for i in range(5)]
    publisher.send(records)
    publisher.wait()
    assert sorted(acked) == sorted(value for _, value, _ in records)


def test_a_delivery_without_an_offset_is_resent() -> None:
    acked: list[bytes] = []
    publisher = _publisher([_FakeProducer(acked, fail=0, fatal=False, no_offset=2)])
    records = [(b"k", f"v{i}".encode(), i) for i in range(3)]
    publisher.send(records)
    publisher.wait()
    assert sorted(acked) == sorted(value for _, value, _ in records)


def test_fatal_error_replaces_the_producer_and_loses_nothing() -> None:
    acked: list[bytes] = []
    first = _FakeProducer(acked, fail=1, fatal=True)
    second = _FakeProducer(acked, fail=0, fatal=False)
    publisher = _publisher([first, second])
    records = [(b"k", f"v{i}".encode(), i) for i in range(4)]
    publisher.send(records)
    publisher.wait()
    assert set(acked) == {value for _, value, _ in records}
    assert second.produced >= 1  # the failed record went out through a new producer session
