"""Hand-written bad input against the running API: each gets a clear 4xx naming what is wrong,
the service stays healthy, and nothing of a refused request reaches the event log.

Every refused request carries a marker (in its customer ids and idempotency keys); the last
test reads the API's own topics from the start and finds none of them there, while the
accepted requests of this module are all there.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from byoc_platform import clients
from byoc_platform.events import decode_batch, decode_report_batch
from tests.fuzz.api_process import ApiProcess, api_settings, start_api
from tests.fuzz.conftest import MAX_BODY
from tests.stack_fixtures import Stack

pytestmark = pytest.mark.integration

SOCKET_WAIT_S = 60.0  # a generous bound for raw-socket answers (not a timing assertion)
REFUSED: set[str] = set()  # markers of refused requests
ACCEPTED: set[str] = set()  # idempotency keys of accepted events


def marker(kind: str) -> str:
    value = f"bad-{kind}-{uuid.uuid4().hex[:8]}"
    REFUSED.add(value)
    return value


def event(mark: str, i: int = 0, **fields: Any) -> dict[str, Any]:
    return {"customerId": mark, "eventName": "api_call", "idempotencyKey": f"{mark}-{i}", **fields}


@pytest.fixture(scope="module")
def http(fuzz_api: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=fuzz_api.url,
        headers={"X-API-KEY": fuzz_api.api_key, "Content-Type": "application/json"},
        timeout=30,
    ) as client:
        yield client


def refused(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] and error["message"]
    for word in words:
        assert word in error["message"], (word, error["message"])
    assert response.headers["x-should-retry"] == "false"  # the SDK must not resend it
    return error


def still_healthy(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    key = f"ok-{uuid.uuid4().hex[:8]}"
    ok = http.post("/api/v1/events", json={"events": [event("fuzz-ok", idempotencyKey=key)]})
    assert ok.status_code == 200, ok.text
    ACCEPTED.add(key)


def test_oversized_bodies_are_413_declared_or_streamed(http: httpx.Client) -> None:
    mark = marker("big")
    padding = "x" * (MAX_BODY + 1)
    body = json.dumps({"events": [event(mark, dimensions={"pad": padding})]}).encode()
    refused(http.post("/api/v1/events", content=body), 413, str(MAX_BODY))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield body[:1000]
        for start in range(1000, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    refused(http.post("/api/v1/events", content=chunks()), 413, str(MAX_BODY))
    still_healthy(http)


def test_more_than_1000_events_is_413_and_1000_is_fine(http: httpx.Client) -> None:
    mark = marker("1001")
    too_many = [event(mark, i) for i in range(1001)]
    refused(http.post("/api/v1/events", json={"events": too_many}), 413, "1001", "1000")
    fine = [event("fuzz-1000", i, idempotencyKey=f"k1000-{uuid.uuid4().hex}") for i in range(1000)]
    assert http.post("/api/v1/events", json={"events": fine}).status_code == 200
    ACCEPTED.update(e["idempotencyKey"] for e in fine)
    still_healthy(http)


def test_empty_batches_are_422(http: httpx.Client) -> None:
    refused(http.post("/api/v1/events", json={"events": []}), 422, "events")
    refused(http.post("/api/v2/usage", json={"usages": []}), 422, "usages")
    still_healthy(http)


@pytest.mark.parametrize(
    ("literal", "status"),
    [(b"NaN", 400), (b"Infinity", 400), (b"-Infinity", 400), (b"1e999", 400)],
)
def test_nan_and_infinity_are_refused(http: httpx.Client, literal: bytes, status: int) -> None:
    mark = marker("nan")
    body = json.dumps({"events": [event(mark, dimensions={"v": 0})]}).encode()
    body = body.replace(b'"v": 0', b'"v": ' + literal)
    refused(http.post("/api/v1/events", content=body), status)
    usage = json.dumps({"usages": [{"customerId": mark, "featureId": "f", "value": 0}]}).encode()
    usage = usage.replace(b'"value": 0', b'"value": ' + literal)
    assert http.post("/api/v2/usage", content=usage).status_code in (400, 422)
    still_healthy(http)


@pytest.mark.parametrize(
    "value",
    ["9" * 400, "18446744073709551616", "9007199254740993", "34359738368.5", "1e300"],
)
def test_huge_usage_values_are_422_naming_the_value(http: httpx.Client, value: str) -> None:
    mark = marker("huge")
    body = b'{"usages":[{"customerId":"%s","featureId":"feature-api-calls","value":%s}]}' % (
        mark.encode(),
        value.encode(),
    )
    refused(http.post("/api/v2/usage", content=body), 422, "value")
    still_healthy(http)


def test_one_bad_event_refuses_the_whole_batch_naming_index_and_field(
    http: httpx.Client,
) -> None:
    mark = marker("mixed")
    batch = [event(mark, i) for i in range(999)]
    batch.insert(500, {"customerId": mark, "eventName": "api_call"})  # no idempotencyKey
    refused(
        http.post("/api/v1/events", json={"events": batch}), 422, "$.events[500]", "idempotencyKey"
    )
    batch[500] = event(mark, 500, customerId=7)
    refused(http.post("/api/v1/events", json={"events": batch}), 422, "$.events[500].customerId")
    batch[500] = event(mark, 500, timestamp="2999-01-01T00:00:00Z")
    refused(http.post("/api/v1/events", json={"events": batch}), 422, "$.events[500].timestamp")
    batch[500] = event(mark, 500, timestamp="not a time")
    refused(http.post("/api/v1/events", json={"events": batch}), 422, "$.events[500].timestamp")
    still_healthy(http)


def test_malformed_json_is_400_and_a_form_415(http: httpx.Client) -> None:
    mark = marker("malformed")
    good = json.dumps({"events": [event(mark)]}).encode()
    for body in (good[:-5], b"", b"\x00\x01", b"events=1", good + b"garbage"):
        refused(http.post("/api/v1/events", content=body), 400, "JSON")
    form = http.post(
        "/api/v1/events",
        data={"customerId": mark},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    refused(form, 415, "application/x-www-form-urlencoded", "application/json")
    graphql = http.post("/graphql", content=good[:-5])
    assert graphql.status_code == 400 and graphql.json()["errors"][0]["message"]
    still_healthy(http)


def test_unknown_fields_are_422_naming_the_field_and_the_event(http: httpx.Client) -> None:
    # REST refuses them like GraphQL's typed inputs: a misspelt field is not dropped silently.
    mark = marker("unknown")
    batch = [event(mark, i) for i in range(3)]
    batch[2] = event(mark, 2, secret="s")
    refused(
        http.post("/api/v1/events", json={"events": batch}),
        422,
        "unknown field `secret`",
        "$.events[2]",
    )
    refused(
        http.post("/api/v1/events", json={"events": [event(mark)], "extra": 1}),
        422,
        "unknown field `extra`",
    )
    usage = {"customerId": mark, "featureId": "feature-api-calls", "value": 1, "secret": "s"}
    refused(
        http.post("/api/v2/usage", json={"usages": [usage]}),
        422,
        "unknown field `secret`",
        "$.usages[0]",
    )
    gql = http.post(
        "/graphql",
        json={
            "operationName": "ReportEvent",
            "variables": {"input": {"usageEvents": [event(mark, secret="s")]}},
        },
    )
    assert gql.status_code == 200 and "secret" in gql.json()["errors"][0]["message"]
    still_healthy(http)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_a_body_not_declared_json_is_415(
    fuzz_api: ApiProcess, http: httpx.Client, content_type: str | None
) -> None:
    mark = marker("ctype")
    headers = {"X-API-KEY": fuzz_api.api_key}
    if content_type is not None:
        headers["Content-Type"] = content_type
    named = content_type or "Missing Content-Type"
    bodies = {
        "/api/v1/events": {"events": [event(mark)]},
        "/api/v2/usage": {"usages": [{"customerId": mark, "featureId": "f", "value": 1}]},
        # Enforcement: refused before the body is read, so its content does not matter.
        "/api/v1/credits/grants": {"customerId": mark},
        "/api/v1/credits/consumption": {"customerId": mark},
        "/api/v1/credits/consumption/async": {"customerId": mark},
        "/api/v1/credits/reservations/r-1/release": {"customerId": mark},
    }
    with httpx.Client(base_url=fuzz_api.url, headers=headers, timeout=30) as raw:
        for path, body in bodies.items():
            refused(raw.post(path, content=json.dumps(body)), 415, named, "application/json")
        document = {
            "operationName": "ReportEvent",
            "variables": {"input": {"usageEvents": [event(mark)]}},
        }
        gql = raw.post("/graphql", content=json.dumps(document))
    assert gql.status_code == 415, gql.text
    message = gql.json()["errors"][0]["message"]
    assert named in message and "application/json" in message
    still_healthy(http)


def test_wrong_methods_and_paths_are_clear(http: httpx.Client) -> None:
    response = http.get("/api/v1/events")
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    assert http.post("/api/v9/nothing", json={}).status_code == 404
    still_healthy(http)


def stalled_request(port: int, api_key: str, body: bytes) -> socket.socket:
    """A request that promises a body of 100000 bytes and sends only ``body``."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(SOCKET_WAIT_S)
    sock.sendall(
        b"POST /api/v1/events HTTP/1.1\r\nHost: t\r\nX-API-KEY: "
        + api_key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        + body
    )
    return sock


def answer_then_close(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The server's answer on a raw socket, read until the server closes the connection."""
    received = b""
    while chunk := sock.recv(65536):  # a socket timeout here fails the test
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_slow_clients_get_408_and_do_not_hold_up_the_others(
    fuzz_api: ApiProcess, http: httpx.Client
) -> None:
    port = fuzz_api.settings.ports.api
    mark = marker("slow")
    partial = json.dumps({"events": [event(mark)]}).encode()[:-3]
    stalled = [stalled_request(port, fuzz_api.api_key, partial) for _ in range(20)]
    try:
        for _ in range(10):
            still_healthy(http)
        for sock in stalled:  # each is cut off with 408, naming the setting, and closed
            status, body = answer_then_close(sock)
            assert status == 408, body
            assert body["error"]["code"] == "REQUEST_TIMEOUT"
            assert "api.body_timeout_s" in body["error"]["message"]
    finally:
        for sock in stalled:
            sock.close()
    still_healthy(http)


def test_connections_without_a_whole_request_are_closed(
    fuzz_api: ApiProcess, http: httpx.Client
) -> None:
    port = fuzz_api.settings.ports.api
    silent = socket.create_connection(("127.0.0.1", port))
    partial = socket.create_connection(("127.0.0.1", port))
    try:
        for sock in (silent, partial):
            sock.settimeout(SOCKET_WAIT_S)
        partial.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: t\r\nX-API-KE")
        assert silent.recv(65536) == b""  # closed without a word, like an idle keep-alive
        status, body = answer_then_close(partial)
        assert status == 408 and "api.header_timeout_s" in body["error"]["message"]
    finally:
        silent.close()
        partial.close()
    still_healthy(http)


def test_sigterm_with_stalled_clients_exits_and_loses_nothing_acked(
    infra: Stack, tmp_path: Path
) -> None:
    # Timeouts far beyond the test: only the shutdown itself can end the stalled clients.
    api = start_api(
        api_settings(infra.settings, tmp_path, header_timeout_s=600, body_timeout_s=600)
    )
    port = api.settings.ports.api
    mark = f"bad-term-{uuid.uuid4().hex[:8]}"
    acked: list[str] = []
    sent_one = threading.Event()
    stop = threading.Event()

    def send() -> None:  # complete requests, before and during the shutdown
        with httpx.Client(base_url=api.url, headers={"X-API-KEY": api.api_key}) as client:
            for number in itertools.count():
                key = f"term-{uuid.uuid4().hex[:8]}-{number}"
                try:
                    ok = client.post(
                        "/api/v1/events",
                        json={"events": [event("fuzz-term", 0, idempotencyKey=key)]},
                    )
                except httpx.HTTPError:
                    return  # the server is gone
                if ok.status_code == 200:
                    acked.append(key)
                    sent_one.set()
                if stop.is_set() or ok.status_code != 200:
                    return

    sender = threading.Thread(target=send)
    stalled = stalled_request(
        port, api.api_key, json.dumps({"events": [event(mark)]}).encode()[:-3]
    )
    idle = socket.create_connection(("127.0.0.1", port))
    idle.settimeout(SOCKET_WAIT_S)
    try:
        sender.start()
        assert sent_one.wait(SOCKET_WAIT_S)
        api.proc.send_signal(signal.SIGTERM)
        status, body = answer_then_close(stalled)  # answered at once, not after a timeout
        assert status == 503, body
        assert "shutting down" in body["error"]["message"]
        assert idle.recv(65536) == b""
        code = api.proc.wait(120)  # generous; the log says whether shutdown had to give up
    finally:
        stop.set()
        sender.join(60)
        stalled.close()
        idle.close()
        api.stop()
    log = api.log()
    assert code in (0, -signal.SIGTERM), log[-3000:]
    assert "graceful shutdown exceeded" not in log, log[-3000:]
    assert "ingestion flushed and stopped" in log
    stored = read_topic(api, api.settings.kafka.events_topic, idle_s=10.0)
    keys = {e.idempotencyKey for m in stored for e in decode_batch(m.value()).events}
    assert acked and set(acked) <= keys, sorted(set(acked) - keys)[:5]
    assert not any(mark in m.value().decode() for m in stored)


def test_many_connections_at_once(fuzz_api: ApiProcess, http: httpx.Client) -> None:
    port = fuzz_api.settings.ports.api
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(400)]
    try:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
        with httpx.Client(base_url=fuzz_api.url, limits=limits, timeout=60) as burst:
            statuses = [burst.get("/healthz").status_code for _ in range(50)]
        assert statuses == [200] * 50
        still_healthy(http)
    finally:
        for sock in idle:
            sock.close()
    still_healthy(http)


def read_topic(fuzz_api: ApiProcess, topic: str, idle_s: float = 5.0) -> list[Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(clients.consumer_config(fuzz_api.settings, f"fuzz-read-{uuid.uuid4()}"))
    consumer.subscribe([topic])
    messages: list[Any] = []
    last = time.monotonic()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            for message in consumer.consume(500, 1.0):
                if message.error() is None:
                    messages.append(message)
                    last = time.monotonic()
    finally:
        consumer.close()
    return messages


def test_nothing_of_a_refused_request_reached_the_log(fuzz_api: ApiProcess) -> None:
    assert REFUSED and ACCEPTED, "run with the rest of this module"
    kafka = fuzz_api.settings.kafka
    stored_text = []
    keys = set()
    for message in read_topic(fuzz_api, kafka.events_topic):
        batch = decode_batch(message.value())
        keys.update(e.idempotencyKey for e in batch.events)
        stored_text.append(message.value().decode())
    for message in read_topic(fuzz_api, kafka.reports_topic, idle_s=2.0):
        decode_report_batch(message.value())
        stored_text.append(message.value().decode())
    everything = "\n".join(stored_text)
    leaked = sorted(m for m in REFUSED if m in everything)
    assert not leaked, f"parts of refused requests are in the log: {leaked}"
    assert keys >= ACCEPTED, f"accepted events missing: {sorted(ACCEPTED - keys)[:5]}"
    assert '"secret"' not in everything  # unknown fields are not carried into records
