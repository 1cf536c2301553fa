"""The load of the fault test: client threads reporting events through the official ``stigg``
SDK (with its retries), and a ledger of what each event's fate was as the client saw it.

Every event is generated from the seed, so a failing seed replays the same events (the kill
moments replay too; the interleaving with the machine's scheduling does not). Each
idempotency key always carries the same content, so "the stored row equals what was sent"
is checkable, and duplicates are deliberate: a client re-sends some acknowledged batches
whole and mixes acknowledged events into new batches, on top of the SDK's own retries.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from stigg._client import Stigg
from stigg._exceptions import APIError

# Seeded customers of the control plane's default catalog (their api_call and llm.tokens
# events feed the enforcement counters of feature-api-calls / feature-gpt-tokens).
METERED_CUSTOMERS = ["customer-acme", "customer-initech"]
OTHER_CUSTOMERS = [f"fault-cust-{i}" for i in range(10)]
RESOURCES = ["ws-1", "ws-2"]

# The SDK rides out a restart: up to ~2.5 min of backoff (0.5 s doubling, capped at 8 s, or
# the server's retry-after), each attempt bounded by a short timeout.
SDK_MAX_RETRIES = 24
SDK_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SentEvent:
    customer_id: str
    event_name: str
    idempotency_key: str
    timestamp_ms: int
    resource_id: str | None
    dimensions: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.customer_id, self.idempotency_key)

    def to_sdk(self) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        event: dict[str, Any] = {
            "customer_id": self.customer_id,
            "event_name": self.event_name,
            "idempotency_key": self.idempotency_key,
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "dimensions": self.dimensions,
        }
        if self.resource_id is not None:
            event["resource_id"] = self.resource_id
        return event


@dataclass
class Ledger:
    """What the clients sent and what the API acknowledged (2xx), shared by the threads."""

    sent: dict[tuple[str, str], SentEvent] = field(default_factory=dict)
    acked: set[tuple[str, str]] = field(default_factory=set)
    requests: int = 0
    acked_requests: int = 0
    failed_requests: int = 0
    resent_batches: int = 0
    mixed_duplicates: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def record(self, events: list[SentEvent], ok: bool, error: str = "") -> None:
        with self.lock:
            self.requests += 1
            for event in events:
                self.sent.setdefault(event.key, event)
            if ok:
                self.acked_requests += 1
                self.acked.update(e.key for e in events)
            else:
                self.failed_requests += 1
                if len(self.failures) < 20:
                    self.failures.append(error)


class LoadClient(threading.Thread):
    """One application thread: small batches at a modest pace, until told to stop."""

    def __init__(
        self,
        index: int,
        seed: int,
        base_url: str,
        api_key: str,
        ledger: Ledger,
        stop: threading.Event,
        pace_s: float = 0.25,
    ) -> None:
        super().__init__(name=f"load-{index}", daemon=True)
        self.index = index
        self.rng = random.Random(f"{seed}/client/{index}")
        self.seed = seed
        self.ledger = ledger
        self.stop_event = stop
        self.pace_s = pace_s
        self.client = Stigg(
            api_key=api_key,
            base_url=base_url,
            max_retries=SDK_MAX_RETRIES,
            timeout=httpx.Timeout(SDK_TIMEOUT_S, connect=3.0),
        )
        self.counter = 0
        self.acked_batches: list[list[SentEvent]] = []
        self.error: BaseException | None = None
        self.client_errors = 0  # 4xx answers: never expected for well-formed events

    def new_event(self) -> SentEvent:
        rng = self.rng
        self.counter += 1
        key = f"s{self.seed}-c{self.index}-e{self.counter}"
        metered = rng.random() < 0.5
        customer = rng.choice(METERED_CUSTOMERS if metered else OTHER_CUSTOMERS)
        resource = None if metered or rng.random() < 0.6 else rng.choice(RESOURCES)
        now = int(time.time() * 1000)
        # 5% well behind the watermark (the late path), the rest about now.
        late = rng.random() < 0.05
        timestamp = now - (rng.randint(90_000, 600_000) if late else rng.randint(0, 2_000))
        kind = rng.random()
        if kind < 0.55:
            name, dims = "api_call", {"region": rng.choice(["eu", "us"])}
        elif kind < 0.9:
            name = "llm.tokens"
            dims = {"tokens": rng.randint(1, 5000), "model": rng.choice(["small", "large"])}
        else:
            name, dims = "search.query", {"latency_ms": round(rng.uniform(1, 300), 3)}
        return SentEvent(customer, name, key, timestamp, resource, dims)

    def next_batch(self) -> list[SentEvent]:
        rng = self.rng
        if self.acked_batches and rng.random() < 0.05:
            self.ledger.count("resent_batches")
            return rng.choice(self.acked_batches)  # the app re-sends a whole batch
        batch = [self.new_event() for _ in range(rng.randint(1, 20))]
        if self.acked_batches and rng.random() < 0.1:
            old = rng.choice(rng.choice(self.acked_batches))
            if old.key not in {e.key for e in batch}:
                self.ledger.count("mixed_duplicates")
                batch.insert(rng.randrange(len(batch) + 1), old)
        return batch

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                batch = self.next_batch()
                try:
                    self.client.v1.events.report(events=[e.to_sdk() for e in batch])
                except APIError as exc:  # the SDK gave up (retries exhausted) or a 4xx
                    status = getattr(exc, "status_code", None)
                    self.ledger.record(
                        batch, ok=False, error=f"{status} {type(exc).__name__}: {exc}"
                    )
                    if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                        self.client_errors += 1
                else:
                    self.ledger.record(batch, ok=True)
                    self.acked_batches.append(batch)
                self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.pace_s)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.client.close()
