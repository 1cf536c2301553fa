"""Undecodable bodies (invalid UTF-8, absurd nesting) and numbers beyond float range: 4xx."""

from __future__ import annotations

import httpx
import pytest

from tests.fuzz.api_process import ApiProcess

EVENT = b'{"customerId":"c","eventName":"api_call","idempotencyKey":"k"'


@pytest.fixture(scope="module")
def http(fuzz_api: ApiProcess):
    with httpx.Client(
        base_url=fuzz_api.url,
        timeout=30,
        headers={"X-API-KEY": fuzz_api.api_key, "Content-Type": "application/json"},
    ) as client:
        yield client


@pytest.mark.parametrize(
    "path, body",
    [
        (
            "/api/v1/events",
            b'{"events":[{"customerId":"\xff","eventName":"e","idempotencyKey":"k"}]}',
        ),
        ("/api/v1/events", b"[" * 100_000 + b"]" * 100_000),
        (
            "/api/v1/events",
            b'{"events":[' + EVENT + b',"dimensions":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}]}",
        ),
        (
            "/graphql",
            b'{"operationName":"ReportEvent","variables":{"input":'
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}",
        ),
        (
            "/graphql",
            b'{"operationName":"ReportEvent","variables":{"input":{"usageEvents":[{"customerId":"\xff","eventName":"e","idempotencyKey":"k"}]}}}',
        ),
    ],
    ids=[
        "invalid-utf8",
        "deep-nesting",
        "deep-nesting-in-dimensions",
        "graphql-deep-nesting",
        "graphql-invalid-utf8",
    ],
)
def test_undecodable_bodies_are_400_not_500(http: httpx.Client, path: str, body: bytes) -> None:
    response = http.post(path, content=body)
    assert response.status_code == 400, (response.status_code, response.text)


def test_a_dimension_beyond_float_range_is_refused(http: httpx.Client) -> None:
    body = b'{"events":[' + EVENT + b',"dimensions":{"n":' + b"9" * 400 + b"}}]}"
    response = http.post("/api/v1/events", content=body)
    # Were it accepted, the stream engine could not sum it (float overflow).
    assert response.status_code == 422 and "dimensions" in response.text
