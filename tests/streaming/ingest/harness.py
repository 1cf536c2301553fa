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

from byoc_platform import clients
from byoc_platform.events import (
    EventBatch,
    UsageReportBatch,
    decode_batch,
    decode_report_batch,
)
from byoc_platform.settings import Settings
from tests.stack_fixtures import free_port, settings_env

REPO = Path(__file__).resolve().parents[3]


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
        return self.proc.wait(timeout)


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
    deadline = time.monotonic() + 30
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
            raise RuntimeError(f"runtime API not ready in 30s:\n{api.log()}")
        time.sleep(0.2)


def unique(prefix: str = "cust") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class KafkaReader:
    """Collects the records of one topic whose key belongs to the wanted customers."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.consumer = Consumer(
            clients.consumer_config(settings, f"ingest-test-{uuid.uuid4().hex}")
        )
        self.consumer.subscribe([topic])
        self.seen: list[Any] = []

    def close(self) -> None:
        self.consumer.close()

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(500, timeout=0.3):
                if message.error() is None:
                    self.seen.append(message)

    def read(
        self,
        keys: Iterable[bytes],
        until: Callable[[list[Any]], bool],
        timeout: float = 30.0,
    ) -> list[Any]:
        """Messages with these keys, once ``until(messages)`` holds (or timeout)."""
        wanted = set(keys)
        deadline = time.monotonic() + timeout
        while True:
            mine = [m for m in self.seen if m.key() in wanted]
            if until(mine) or time.monotonic() > deadline:
                return mine
            self.poll_for(0.5)

    def settle(self, keys: Iterable[bytes], seconds: float = 3.0) -> list[Any]:
        """Messages with these keys after polling for a while (to prove absence)."""
        self.poll_for(seconds)
        wanted = set(keys)
        return [m for m in self.seen if m.key() in wanted]


def event_batches(messages: list[Any]) -> list[EventBatch]:
    return [decode_batch(m.value()) for m in messages]


def report_batches(messages: list[Any]) -> list[UsageReportBatch]:
    return [decode_report_batch(m.value()) for m in messages]
