"""The broker dies: never a 200 unless durable; 503/429 with retry-after; back when it is.

A stack of our own (KMS, S3, Tansu on s3://) so killing its broker harms no other test; the
supervisor restarts the broker only when ``check()`` is called, so each test decides how long
it stays down. Tansu on s3:// keeps every acknowledged record across kill -9.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.stack_fixtures import Stack, start_stack, test_settings
from tests.streaming.ingest.harness import (
    ApiProcess,
    KafkaReader,
    count,
    events_reader,
    items_of,
    start_api,
    unique,
)

PRODUCE_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = test_settings(tmp_path_factory.mktemp("outage"))
    stack = start_stack(settings, ["kms", "s3", "kafka"], restart=True)
    try:
        yield stack
    finally:
        stack.supervisor.stop()


@pytest.fixture(scope="module")
def api(own_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    process = start_api(
        own_stack.settings,
        own_stack.api_key,
        tmp_path_factory.mktemp("outage-api"),
        extra_env={
            "BYOC_API__PRODUCE_TIMEOUT_S": str(PRODUCE_TIMEOUT_S),
            "BYOC_API__PRODUCER_BUFFER_BYTES": str(1024 * 1024),
        },
    )
    try:
        yield process
    finally:
        process.stop()


def events(customer: str, n: int, prefix: str = "k", pad: int = 0) -> dict:
    return {
        "events": [
            {
                "customerId": customer,
                "eventName": "e",
                "idempotencyKey": f"{prefix}{i}",
                "dimensions": {"pad": "x" * pad} if pad else {},
            }
            for i in range(n)
        ]
    }


def post(api: ApiProcess, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{api.url}/api/v1/events",
        json=body,
        headers={"X-API-KEY": api.api_key},
        timeout=timeout,
    )


def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)


def ready(api: ApiProcess) -> int:
    return httpx.get(f"{api.url}/readyz", timeout=10).status_code


def buffered_bytes(api: ApiProcess) -> float:
    for line in httpx.get(f"{api.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("byoc_ingest_buffer_bytes "):
            return float(line.split()[1])
    raise AssertionError("byoc_ingest_buffer_bytes not exported")


def restart_broker(stack: Stack, api: ApiProcess) -> None:
    stack.supervisor.check()  # sees the dead broker, restarts it, waits until healthy
    assert "kafka" in stack.supervisor.running
    wait_for(lambda: ready(api) == 200)


def test_broker_down_answers_503_and_429_with_retry_after_and_writes_nothing(
    own_stack: Stack, api: ApiProcess
) -> None:
    down, refused = unique("down"), unique("refused")
    assert post(api, events(unique("warm"), 1)).status_code == 200
    own_stack.supervisor.kill("kafka")

    # A batch in flight while the broker is gone: 503 after the produce timeout, never 200.
    outcome: dict[str, httpx.Response] = {}
    inflight = threading.Thread(
        target=lambda: outcome.setdefault("first", post(api, events(down, 1000, pad=600)))
    )
    inflight.start()
    wait_for(lambda: buffered_bytes(api) > 0, timeout=PRODUCE_TIMEOUT_S)
    # Meanwhile the producer buffer (1 MiB) cannot take another ~700 KB: 429 at once.
    full = post(api, events(refused, 1000, pad=600))
    assert full.status_code == 429
    assert full.json()["error"]["code"] == "RATE_LIMITED"
    assert int(full.headers["retry-after"]) >= 1
    inflight.join()
    first = outcome["first"]
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "UNAVAILABLE"
    assert int(first.headers["retry-after"]) >= 1
    assert first.headers["x-should-retry"] == "true"
    wait_for(lambda: ready(api) == 503, timeout=20)
    body = httpx.get(f"{api.url}/readyz").json()
    assert body["components"]["ingest"]["ready"] is False

    restart_broker(own_stack, api)
    for customer in (refused, down):
        assert post(api, events(customer, 1, prefix="sentinel")).status_code == 200
    reader = events_reader(own_stack.settings)
    try:
        found = reader.read([refused, down], lambda f: count(f, [refused, down]) >= 2)
        # The 429'd batch was refused before anything was produced; the 503'd one expired in
        # the producer while the broker was down: only the sentinels.
        assert [e.idempotencyKey for e in items_of(found, refused)] == ["sentinel0"]
        assert [e.idempotencyKey for e in items_of(found, down)] == ["sentinel0"]
    finally:
        reader.close()


@dataclass
class Sender:
    """Sends batches of its own customer one after another; remembers what was answered."""

    api: ApiProcess
    customer: str = field(default_factory=lambda: unique("load"))
    answered: list[tuple[int, int]] = field(default_factory=list)  # (batch number, status)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            try:
                status = post(
                    self.api,
                    events(self.customer, 200, prefix=f"b{number}-"),
                    timeout=PRODUCE_TIMEOUT_S * 4,
                ).status_code
            except httpx.HTTPError:
                status = 0  # connection error: also "not acknowledged"
            self.answered.append((number, status))
            number += 1


def test_broker_killed_mid_request_every_200_is_durable(own_stack: Stack, api: ApiProcess) -> None:
    senders = [Sender(api) for _ in range(4)]
    threads = [threading.Thread(target=s.run) for s in senders]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(s.answered) >= 3 for s in senders), timeout=60)
        own_stack.supervisor.kill("kafka", signal.SIGKILL)
        wait_for(lambda: any(st != 200 for s in senders for _, st in s.answered), timeout=60)
        restart_broker(own_stack, api)
        try:
            wait_for(lambda: all(s.answered[-1][1] == 200 for s in senders), timeout=60)
        except AssertionError:
            raise AssertionError([s.answered[-8:] for s in senders]) from None
    finally:
        for sender in senders:
            sender.stop.set()
        for thread in threads:
            thread.join()

    statuses = {st for s in senders for _, st in s.answered}
    assert 200 in statuses and statuses - {200}, statuses
    assert statuses <= {200, 503, 429, 0}, statuses
    reader: KafkaReader = events_reader(own_stack.settings)
    try:
        customers = [s.customer for s in senders]
        acked = {s.customer: [n for n, st in s.answered if st == 200] for s in senders}
        needed = sum(len(v) for v in acked.values()) * 200
        found = reader.read(customers, lambda f: count(f, customers) >= needed, timeout=60)
        for sender in senders:
            keys = {e.idempotencyKey for e in items_of(found, sender.customer)}
            for number in acked[sender.customer]:
                missing = {f"b{number}-{i}" for i in range(200)} - keys
                assert not missing, f"batch {number} answered 200 but {len(missing)} lost"
    finally:
        reader.close()


def test_after_a_broker_restart_requests_succeed_without_a_503(
    own_stack: Stack, api: ApiProcess
) -> None:
    """The broker dies with records in flight: Tansu then refuses the producer's id after its
    restart (fenced / unknown producer). The API replaces its producer and resends the refused
    request itself, so no request started once the broker is back gets a 503."""
    customer = unique("fenced")
    answers: list[tuple[float, int, str]] = []  # (started, status, body)
    stop = threading.Event()

    def send() -> None:
        number = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = post(api, events(customer, 200, prefix=f"b{number}-"), timeout=30)
                answers.append((started, answer.status_code, answer.text[:200]))
            except httpx.HTTPError as exc:
                answers.append((started, 0, repr(exc)))
            number += 1

    log_before = len(api.log())
    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: len(answers) >= 3, timeout=60)
        own_stack.supervisor.kill("kafka", signal.SIGKILL)  # with a request in flight
        wait_for(lambda: ready(api) == 503, timeout=30)  # dead, and seen dead, before restart
        restart_broker(own_stack, api)
        back = time.monotonic()
        wait_for(lambda: sum(1 for s, _, _ in answers if s >= back) >= 10, timeout=120)
    finally:
        stop.set()
        sender.join()
    after = [(status, body) for started, status, body in answers if started >= back]
    assert all(status == 200 for status, _ in after), after
    # Whenever it started, no request is refused because the producer was fenced.
    assert not [body for _, _, body in answers if "FENCED" in body.upper()]
    log = api.log()[log_before:]
    if "producer unusable" in log:  # the fencing path was taken: it resent, not answered 503
        assert "resending" in log
