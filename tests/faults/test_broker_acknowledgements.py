"""What an acknowledgement from the embedded broker is worth when it or its S3 is SIGKILLed.

A producer configured like the platform's (clients.producer_config: acks=all, idempotence as
``kafka.idempotent_producer`` says, off by default) writes continuously while Tansu and then
its S3 server are killed and restarted, round after round; afterwards the topic is read from
the start. Every record acknowledged WITH an offset must be there: that is the durability the
runtime API and the stream processor build on (invariant 1).

Why idempotence is off (finding F10, docs/reliability.md): with it on, this test lost
acknowledged records. Tansu 0.6.0 records an idempotent batch's sequence number before the
batch is written; when S3 dies in between, the producer's retry of that batch is answered
DUPLICATE_SEQUENCE_NUMBER, which librdkafka reports as delivered (seen with offset -1 and with
a made-up offset 0) although the batch is not in the log. Records reported delivered WITHOUT
an offset are still counted and printed: they must never be taken as durable.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from byoc_platform import clients
from byoc_platform.stack.supervisor import Supervisor
from tests.faults.chaos import Watchdog, wait_healthy
from tests.stack_fixtures import test_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 4  # each: the broker, then its S3 server a moment later


class Writer(threading.Thread):
    """Produces numbered records; replaces the producer when the broker fenced it."""

    def __init__(self, settings: Any, topic: str) -> None:
        super().__init__(name="writer", daemon=True)
        self.settings = settings
        self.topic = topic
        self.stop_event = threading.Event()
        # value -> (partition, offset); offset None: reported delivered without an offset
        self.acked: dict[str, tuple[int, int | None]] = {}
        self.failed = 0
        self.replaced = 0
        self.lock = threading.Lock()
        self.fenced = False

    def producer(self) -> Producer:
        quiet = {"message.timeout.ms": 10000, "log_level": 2}  # no connection-refused spam
        return Producer(clients.producer_config(self.settings, **quiet))

    def delivered(self, err: Any, msg: Any) -> None:
        with self.lock:
            if err is None:
                self.acked[msg.value().decode()] = (msg.partition(), msg.offset())
            else:
                self.failed += 1
                self.fenced = self.fenced or err.fatal()

    def run(self) -> None:
        producer, n = self.producer(), 0
        while not self.stop_event.is_set():
            n += 1
            # Queue full or a fenced producer: this record is simply not sent.
            with contextlib.suppress(BufferError, KafkaException):
                producer.produce(
                    self.topic, value=f"m{n}".encode(), key=f"k{n % 7}".encode(),
                    on_delivery=self.delivered,
                )  # fmt: skip
            producer.poll(0.01)
            if self.fenced:  # as the runtime API does after a fatal (fencing) error
                producer.flush(5)
                producer, self.fenced = self.producer(), False
                self.replaced += 1
            time.sleep(0.005)
        producer.flush(30)


def read_all(settings: Any, topic: str) -> set[str]:
    consumer = Consumer(clients.consumer_config(settings, f"acks-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    values: set[str] = set()
    last = time.monotonic()
    try:
        while time.monotonic() - last < 8:
            for message in consumer.consume(1000, 1.0):
                if message.error() is None:
                    values.add(message.value().decode())
                    last = time.monotonic()
    finally:
        consumer.close()
    return values


def test_broker_and_s3_kills_lose_no_record_acknowledged_with_an_offset(tmp_path: Path) -> None:
    settings = test_settings(tmp_path / "data")
    supervisor = Supervisor(settings, ["kms", "s3", "kafka"], restart=True, max_restarts=50)
    supervisor.start()
    watchdog = Watchdog(supervisor)
    watchdog.start()
    writer = Writer(settings, settings.kafka.events_topic)
    rng = random.Random(20261121)
    try:
        writer.start()
        for _ in range(ROUNDS):
            for victim in ("kafka", "s3"):
                time.sleep(rng.uniform(1.0, 3.0))
                pid = supervisor.kill(victim)
                wait_healthy(supervisor, victim, watchdog, 60, old_pid=pid)
        time.sleep(3.0)
        writer.stop_event.set()
        writer.join(60)
        stored = read_all(settings, settings.kafka.events_topic)
    finally:
        watchdog.pause()
        supervisor.stop()
        watchdog.stop()
    with_offset = {v for v, (_, offset) in writer.acked.items() if offset is not None}
    without = {v for v, (_, offset) in writer.acked.items() if offset is None}
    positions: dict[tuple[int, int | None], list[str]] = {}
    for value in sorted(with_offset, key=lambda v: int(v[1:])):
        positions.setdefault(writer.acked[value], []).append(value)
    reused = {pos: values for pos, values in positions.items() if len(values) > 1}
    print(
        f"acked {len(writer.acked)} ({len(without)} without an offset, "
        f"{len(without - stored)} of those missing), failed {writer.failed}, "
        f"producer replaced {writer.replaced}x, stored {len(stored)}, "
        f"offsets acknowledged twice {len(reused)}"
    )
    assert len(with_offset) > 1000
    missing = sorted(with_offset - stored, key=lambda v: int(v[1:]))
    assert not missing, (
        f"acknowledged with an offset yet missing: "
        f"{[(v, writer.acked[v]) for v in missing[:10]]}; offsets acknowledged twice: "
        f"{list(reused.items())[:10]}"
    )
