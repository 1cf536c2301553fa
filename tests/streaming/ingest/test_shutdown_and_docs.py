"""SIGTERM under load loses nothing acknowledged; /openapi.json and /metrics describe ingestion."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.stack_fixtures import Stack
from tests.streaming.ingest.harness import (
    ApiProcess,
    KafkaReader,
    count,
    items_of,
    start_api,
    unique,
)


def test_sigterm_under_load_stops_accepting_flushes_and_loses_nothing_acked(
    infra: Stack, tmp_path: Path, events_reader: KafkaReader
) -> None:
    api = start_api(infra.settings, infra.api_key, tmp_path)
    customers = [unique("term") for _ in range(4)]
    answered: dict[str, list[tuple[int, int]]] = {c: [] for c in customers}
    stop = threading.Event()

    def send(customer: str) -> None:
        number = 0
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                body = {
                    "events": [
                        {
                            "customerId": customer,
                            "eventName": "e",
                            "idempotencyKey": f"b{number}-{i}",
                        }
                        for i in range(300)
                    ]
                }
                try:
                    status = client.post(
                        f"{api.url}/api/v1/events",
                        json=body,
                        headers={"X-API-KEY": api.api_key},
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                answered[customer].append((number, status))
                number += 1
                if status == 0:
                    return  # the server is gone

    threads = [threading.Thread(target=send, args=(c,)) for c in customers]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while not all(len(v) >= 3 for v in answered.values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        api.proc.send_signal(signal.SIGTERM)
        code = api.proc.wait(40)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert code in (0, -signal.SIGTERM), api.log()
    assert "ingestion flushed and stopped" in api.log()
    # After exit nothing is accepted.
    try:
        refused = httpx.post(f"{api.url}/api/v1/events", json={"events": []}, timeout=5)
        assert refused.status_code != 200
    except httpx.HTTPError:
        pass

    acked = {c: [n for n, s in v if s == 200] for c, v in answered.items()}
    assert all(acked.values())
    needed = sum(len(v) for v in acked.values()) * 300
    found = events_reader.read(customers, lambda f: count(f, customers) >= needed, timeout=60)
    for customer, numbers in acked.items():
        keys = {e.idempotencyKey for e in items_of(found, customer)}
        for number in numbers:
            assert {f"b{number}-{i}" for i in range(300)} <= keys, (customer, number)


def test_openapi_describes_every_ingestion_route(ingest_api: ApiProcess) -> None:
    document = httpx.get(f"{ingest_api.url}/openapi.json").json()
    paths = document["paths"]
    for path in ("/api/v1/events", "/api/v2/usage", "/graphql"):
        operation = paths[path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["type"] == "object"
        if path != "/graphql":  # GraphQL answers a missing operation with 200 + errors
            assert schema["required"]
        assert {"200", "400", "401", "408", "413", "415", "429", "503"} <= set(
            operation["responses"]
        )
    events_schema = paths["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    item = events_schema["properties"]["events"]["items"]
    assert item["required"] == ["customerId", "eventName", "idempotencyKey"]
    # Unknown fields are refused, and the document says so.
    assert events_schema["additionalProperties"] is False
    assert item["additionalProperties"] is False
    usage_schema = paths["/api/v2/usage"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert usage_schema["additionalProperties"] is False
    assert usage_schema["properties"]["usages"]["items"]["additionalProperties"] is False
    assert "422" in paths["/api/v1/events"]["post"]["responses"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert path in paths


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_events_rejections_latency_and_buffer(
    ingest_api: ApiProcess,
) -> None:
    url, headers = ingest_api.url, {"X-API-KEY": ingest_api.api_key}
    before = httpx.get(f"{url}/metrics").text
    customer = unique("metrics")
    body = {
        "events": [
            {"customerId": customer, "eventName": "e", "idempotencyKey": str(i)} for i in range(7)
        ]
    }
    assert httpx.post(f"{url}/api/v1/events", json=body, headers=headers).status_code == 200
    json_headers = {**headers, "Content-Type": "application/json"}
    assert httpx.post(f"{url}/api/v1/events", content=b"{", headers=json_headers).status_code == 400
    after = httpx.get(f"{url}/metrics").text
    assert (
        metric(after, 'byoc_ingest_events_total{route="events"}')
        - metric(before, 'byoc_ingest_events_total{route="events"}')
        == 7
    )
    assert (
        metric(after, 'byoc_ingest_requests_total{route="events"}')
        - metric(before, 'byoc_ingest_requests_total{route="events"}')
        == 2
    )
    rejected = 'byoc_ingest_rejections_total{reason="malformed",route="events"}'
    assert metric(after, rejected) - metric(before, rejected) == 1
    assert metric(after, "byoc_ingest_produce_seconds_count") > metric(
        before, "byoc_ingest_produce_seconds_count"
    )
    assert "byoc_ingest_buffer_fill_ratio" in after
    assert 'byoc_http_requests_total{path="/api/v1/events",status="400"}' in after
