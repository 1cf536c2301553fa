"""Real processes for the ingestion tests: ``byoc serve --role ingest`` as users run it, and a
Kafka reader for what reached the broker.

Reading back (Tansu quirks, platform-facts.md): never end offsets or watermarks; a fresh
consumer group from the earliest offset, filtered by the test's own unique customer ids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from byoc_platform import clients
from byoc_platform.events import EventBatch, decode_batch, decode_report_batch
from byoc_platform.settings import Settings
from tests.stack_fixtures import free_port, settings_env

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 120


@dataclass
class ApiProcess:
    """``python -m byoc_platform serve --role ingest`` on a free port."""

    settings: Settings
    api_key: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a server behind; the test still fails
            self.proc.wait(10)
            raise


def start_api(
    settings: Settings,
    api_key: str,
    log_dir: Path,
    role: str = "ingest",
    extra_env: dict[str, str] | None = None,
) -> ApiProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env.update(settings_env(settings))
    env["BYOC_PORTS__API"] = str(port)
    env["BYOC_PORTS__GRPC"] = str(free_port())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"api-{port}.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "byoc_platform", "serve", "--role", role],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
        )
    api = ApiProcess(settings, api_key, port, proc, log_path)
    # Generous: on a loaded 2-core machine the interpreter start alone can take many seconds.
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime API exited {proc.returncode}:\n{api.log()}")
        try:
            if httpx.get(f"{api.url}/readyz", timeout=2).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            api.stop(signal.SIGKILL)
            raise RuntimeError(f"runtime API not ready in {START_TIMEOUT_S}s:\n{api.log()}")
        time.sleep(0.2)


def unique(prefix: str = "cust") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class KafkaReader:
    """Collects one topic's records that hold events/usages of the wanted customers.

    Records are packed per partition (streaming/ingest/records.py), so a record is matched by
    the customers inside it, not by its key.
    """

    def __init__(self, settings: Settings, topic: str, decode: Callable[[bytes], Any]) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.decode = decode
        self.consumer = Consumer(
            clients.consumer_config(settings, f"ingest-test-{uuid.uuid4().hex}")
        )
        self.consumer.subscribe([topic])
        self.seen: list[tuple[Any, Any]] = []  # (message, decoded value)

    def close(self) -> None:
        self.consumer.close()

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(500, timeout=0.3):
                if message.error() is None:
                    try:
                        value = self.decode(message.value())
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # another test's deliberately bad record (the topic is shared)
                    self.seen.append((message, value))

    def _mine(self, customers: set[str]) -> list[tuple[Any, Any]]:
        return [(m, b) for m, b in self.seen if customers & _customers(b)]

    def read(
        self,
        customers: Iterable[str],
        until: Callable[[list[tuple[Any, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[tuple[Any, Any]]:
        """(message, value) holding these customers, once ``until(found)`` holds or timeout."""
        wanted = set(customers)
        deadline = time.monotonic() + timeout
        while True:
            mine = self._mine(wanted)
            if until(mine) or time.monotonic() > deadline:
                return mine
            self.poll_for(0.5)

    def settle(self, customers: Iterable[str], seconds: float = 3.0) -> list[tuple[Any, Any]]:
        """What holds these customers after polling a while (to prove absence)."""
        self.poll_for(seconds)
        return self._mine(set(customers))


def _customers(value: Any) -> set[str]:
    items = value.events if isinstance(value, EventBatch) else value.usages
    return {item.customerId for item in items}


def items_of(found: list[tuple[Any, Any]], customer: str) -> list[Any]:
    """The events/usages of one customer, in log order (offset; one customer = one partition)."""
    ordered = sorted(found, key=lambda mb: (mb[0].partition(), mb[0].offset()))
    out = []
    for _, value in ordered:
        items = value.events if isinstance(value, EventBatch) else value.usages
        out.extend(item for item in items if item.customerId == customer)
    return out


def count(found: list[tuple[Any, Any]], customers: Iterable[str]) -> int:
    wanted = set(customers)
    return sum(
        1
        for _, value in found
        for item in (value.events if isinstance(value, EventBatch) else value.usages)
        if item.customerId in wanted
    )


def events_reader(settings: Settings) -> KafkaReader:
    return KafkaReader(settings, settings.kafka.events_topic, decode_batch)


def reports_reader(settings: Settings) -> KafkaReader:
    return KafkaReader(settings, settings.kafka.reports_topic, decode_report_batch)
