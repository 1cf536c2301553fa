"""Every rejection of the ingestion routes: status, body, and nothing of the batch in Kafka.

Absence is proven with a sentinel: after the rejected request, a valid event of the SAME
customer is sent; it lands on the same partition after anything the rejected request could
have written, so once the sentinel is read, the customer's events must be the sentinel alone.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from stigg._client import Stigg
from stigg._exceptions import AuthenticationError, UnprocessableEntityError

from tests.streaming.ingest.conftest import MAX_BODY, MAX_SKEW_S
from tests.streaming.ingest.harness import ApiProcess, KafkaReader, count, items_of, unique

UNAUTHENTICATED = {"error": {"code": "UNAUTHENTICATED", "message": "Invalid or missing API key"}}


def event(customer: str, key: str = "k", **extra: Any) -> dict[str, Any]:
    return {"customerId": customer, "eventName": "api_call", "idempotencyKey": key, **extra}


def post(
    api: ApiProcess,
    path: str,
    body: bytes | dict,
    key: str | None = "valid",
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if key is not None:
        headers["X-API-KEY"] = api.api_key if key == "valid" else key
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{api.url}{path}", content=content, headers=headers, timeout=30)


def assert_nothing_reached_kafka(api: ApiProcess, reader: KafkaReader, customer: str) -> None:
    ok = post(api, "/api/v1/events", {"events": [event(customer, "sentinel")]})
    assert ok.status_code == 200
    found = reader.read([customer], lambda f: count(f, [customer]) >= 1)
    assert [e.idempotencyKey for e in items_of(found, customer)] == ["sentinel"]


def future(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


CASES: dict[str, tuple[Callable[[str], bytes | dict], int, str, list[str]]] = {
    # name: (body for customer, status, error code, substrings of the message)
    "malformed_json": (
        lambda c: b'{"events": [{"customerId": "' + c.encode() + b'", ',
        400,
        "BAD_REQUEST",
        ["Malformed JSON"],
    ),
    "not_json_at_all": (
        lambda c: b"customerId=" + c.encode(),
        400,
        "BAD_REQUEST",
        ["Malformed JSON"],
    ),
    "over_1000_events": (
        lambda c: {"events": [event(c, f"k{i}") for i in range(1001)]},
        413,
        "PAYLOAD_TOO_LARGE",
        ["1001", "at most 1000"],
    ),
    "over_body_limit": (
        lambda c: {"events": [event(c, dimensions={"pad": "x" * (MAX_BODY + 10)})]},
        413,
        "PAYLOAD_TOO_LARGE",
        [f"exceeds {MAX_BODY} bytes"],
    ),
    "missing_field": (
        lambda c: {"events": [event(c, "a"), {"customerId": c, "idempotencyKey": "b"}]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["`eventName`", "`$.events[1]`"],
    ),
    "ill_typed_field": (
        lambda c: {"events": [event(c, "a"), event(c, "b"), event(c, "c", dimensions={"x": {}})]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[2].dimensions"],
    ),
    "empty_string_field": (
        lambda c: {"events": [event(c, "a", eventName="")]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[0].eventName"],
    ),
    "bad_timestamp": (
        lambda c: {"events": [event(c, "a", timestamp="yesterday")]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[0].timestamp"],
    ),
    "timestamp_too_far_in_future": (
        lambda c: {
            "events": [event(c, "a", timestamp=future(0)), event(c, "b", timestamp=future(3600))]
        },
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[1].timestamp", f"{MAX_SKEW_S}s in the future"],
    ),
    "timestamp_before_1970": (
        lambda c: {"events": [event(c, "a"), event(c, "b", timestamp="1969-12-31T23:59:59Z")]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[1].timestamp", "before 2025-01-01"],
    ),
    # Stored but never rolled up, archived or billed: no partition starts before 2025.
    "timestamp_before_the_first_hour": (
        lambda c: {
            "events": [
                event(c, "a", timestamp="2025-01-01T00:00:00Z"),
                event(c, "b", timestamp="2024-12-31T23:59:59.999Z"),
            ]
        },
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[1].timestamp", "before 2025-01-01T00:00:00Z, the first hour"],
    ),
    # The stream engines keep a minute's event count as the metric "": it was overwritten.
    "empty_dimension_name": (
        lambda c: {"events": [event(c, "a", dimensions={"": 100})]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["a dimension name is empty", "$.events[0].dimensions"],
    ),
    # Two such values summed to inf (and inf + -inf to a NULL counter): refused before Kafka.
    "huge_float_dimension": (
        lambda c: {"events": [event(c, "a", dimensions={"tokens": 1.7e308})]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[0].dimensions.tokens", "out of range"],
    ),
    "huge_integer_dimension": (
        lambda c: {"events": [event(c, "a"), event(c, "b", dimensions={"tokens": -(2**53)})]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["$.events[1].dimensions.tokens", "out of range"],
    ),
    # One event over the broker's record limit is the client's error, not a 503 to retry.
    "one_event_over_the_record_limit": (
        lambda c: {"events": [event(c, "a", dimensions={f"k{i}": i for i in range(60_000)})]},
        413,
        "PAYLOAD_TOO_LARGE",
        ["Item too large", "bytes encoded"],
    ),
    "empty_batch": (lambda c: {"events": []}, 422, "UNPROCESSABLE_ENTITY", ["at least one"]),
    # Unknown fields are refused, naming the field and the event (a typo is not dropped).
    "unknown_field": (
        lambda c: {"events": [event(c, "a"), event(c, "b", idempotencykey="b2")]},
        422,
        "UNPROCESSABLE_ENTITY",
        ["unknown field `idempotencykey`", "`$.events[1]`"],
    ),
    "unknown_top_level_field": (
        lambda c: {"events": [event(c, "a")], "environmentId": "other"},
        422,
        "UNPROCESSABLE_ENTITY",
        ["unknown field `environmentId`"],
    ),
    "not_an_object": (
        lambda c: [event(c)],
        422,
        "UNPROCESSABLE_ENTITY",
        ["Expected `object`"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_event_batches_answer_and_write_nothing(
    case: str, ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    make, status, code, fragments = CASES[case]
    customer = unique(case.replace("_", "-"))
    response = post(ingest_api, "/api/v1/events", make(customer))
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    for fragment in fragments:
        assert fragment in body["error"]["message"]
    assert response.headers["x-should-retry"] == "false"
    assert_nothing_reached_kafka(ingest_api, events_reader, customer)


USAGE_CASES: dict[str, tuple[Callable[[str], dict], list[str]]] = {
    "bad_update_behavior": (
        lambda c: {
            "usages": [{"customerId": c, "featureId": "f", "value": 1, "updateBehavior": "REPLACE"}]
        },
        ["$.usages[0].updateBehavior"],
    ),
    "missing_value": (
        lambda c: {
            "usages": [
                {"customerId": c, "featureId": "f", "value": 1},
                {"customerId": c, "featureId": "f"},
            ]
        },
        ["`value`", "$.usages[1]"],
    ),
    "fractional_value_too_large": (
        lambda c: {"usages": [{"customerId": c, "featureId": "f", "value": 2.0**36 + 0.5}]},
        ["$.usages[0].value", "2^35"],
    ),
    "unknown_field": (
        lambda c: {"usages": [{"customerId": c, "featureId": "f", "value": 1, "created_at": "x"}]},
        ["unknown field `created_at`", "$.usages[0]"],
    ),
    "created_at_before_1970": (
        lambda c: {
            "usages": [
                {"customerId": c, "featureId": "f", "value": 1, "createdAt": "1900-01-01T00:00:00Z"}
            ]
        },
        ["$.usages[0].createdAt", "before 2025-01-01"],
    ),
    "created_at_before_the_first_hour": (
        lambda c: {
            "usages": [
                {"customerId": c, "featureId": "f", "value": 1, "createdAt": "2024-06-01T00:00:00Z"}
            ]
        },
        ["$.usages[0].createdAt", "before 2025-01-01T00:00:00Z, the first hour"],
    ),
    "empty_dimension_name": (
        lambda c: {
            "usages": [{"customerId": c, "featureId": "f", "value": 1, "dimensions": {"": 1}}]
        },
        ["a dimension name is empty", "$.usages[0].dimensions"],
    ),
    "huge_dimension": (
        lambda c: {
            "usages": [{"customerId": c, "featureId": "f", "value": 1, "dimensions": {"n": 1e300}}]
        },
        ["$.usages[0].dimensions.n", "out of range"],
    ),
    "created_at_in_future": (
        lambda c: {
            "usages": [{"customerId": c, "featureId": "f", "value": 1, "createdAt": future(3600)}]
        },
        ["$.usages[0].createdAt"],
    ),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_rejected_usage_reports_answer_422_and_write_nothing(
    case: str, ingest_api: ApiProcess, reports_reader: KafkaReader
) -> None:
    make, fragments = USAGE_CASES[case]
    customer = unique(case.replace("_", "-"))
    response = post(ingest_api, "/api/v2/usage", make(customer))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "UNPROCESSABLE_ENTITY"
    for fragment in fragments:
        assert fragment in response.json()["error"]["message"]
    # Sentinel on the reports topic: a valid report of the same customer.
    ok = post(
        ingest_api,
        "/api/v2/usage",
        {"usages": [{"customerId": customer, "featureId": "sentinel", "value": 1}]},
    )
    assert ok.status_code == 200
    found = reports_reader.read([customer], lambda f: count(f, [customer]) >= 1)
    assert [u.featureId for u in items_of(found, customer)] == ["sentinel"]


def ingestion_body(path: str, customer: str) -> dict:
    """A valid body for each ingestion route, refused only for what the test changes."""
    if path == "/api/v1/events":
        return {"events": [event(customer)]}
    if path == "/api/v2/usage":
        return {"usages": [{"customerId": customer, "featureId": "f", "value": 1}]}
    return {
        "operationName": "ReportEvent",
        "query": "mutation ReportEvent($input: UsageEventsReportInput!) "
        "{ reportEvent(input: $input) }",
        "variables": {"input": {"usageEvents": [event(customer)]}},
    }


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v2/usage", "/graphql"])
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", None, "application/json; charset=utf-16"]
)
def test_a_body_not_declared_json_is_415_naming_the_expected_type(
    path: str,
    content_type: str | None,
    ingest_api: ApiProcess,
    events_reader: KafkaReader,
    reports_reader: KafkaReader,
) -> None:
    customer = unique("ctype")
    body = ingestion_body(path, customer)
    response = post(ingest_api, path, body, content_type=content_type)
    assert response.status_code == 415, response.text
    assert response.headers["x-should-retry"] == "false"
    if path == "/graphql":  # GraphQL-over-HTTP: a request error, as an errors document
        [error] = response.json()["errors"]
        message = error["message"]
        assert error["extensions"]["code"] == "UnsupportedMediaType"
    else:
        error = response.json()["error"]
        message = error["message"]
        assert error["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "application/json" in message
    assert (content_type or "Missing Content-Type").split(";")[-1].split("=")[-1] in message
    if path == "/api/v2/usage":
        ok = post(
            ingest_api, path, {"usages": [{"customerId": customer, "featureId": "s", "value": 1}]}
        )
        assert ok.status_code == 200
        found = reports_reader.read([customer], lambda f: count(f, [customer]) >= 1)
        assert [u.featureId for u in items_of(found, customer)] == ["s"]
    else:
        assert_nothing_reached_kafka(ingest_api, events_reader, customer)


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v2/usage", "/graphql"])
def test_json_with_a_charset_parameter_is_accepted(path: str, ingest_api: ApiProcess) -> None:
    body = ingestion_body(path, unique("charset"))
    response = post(ingest_api, path, body, content_type="application/json; charset=UTF-8")
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v2/usage", "/graphql"])
@pytest.mark.parametrize("key", [None, "byoc_not-a-key"])
def test_missing_or_invalid_api_key_is_401(
    path: str, key: str | None, ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer = unique("unauth")
    response = post(ingest_api, path, {"events": [event(customer)]}, key=key)
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    if path == "/api/v1/events":
        assert_nothing_reached_kafka(ingest_api, events_reader, customer)


@pytest.mark.parametrize("padded", [b"{} ", b"{}\t", b" {} \t"])
def test_blanks_around_the_api_key_are_not_part_of_it(
    padded: bytes, ingest_api: ApiProcess
) -> None:
    # Raw bytes: httpx refuses to send such a header value, other clients do not.
    body = json.dumps({"events": [event(unique("padded"))]}).encode()
    key = padded.replace(b"{}", ingest_api.api_key.encode())
    port = int(ingest_api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-API-KEY:"
            + key
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_public_routes_need_no_key(ingest_api: ApiProcess) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(f"{ingest_api.url}{path}").status_code == 200, path


def test_sdk_sees_the_errors_as_its_exception_classes(
    ingest_api: ApiProcess, events_reader: KafkaReader
) -> None:
    customer = unique("sdk")
    client = Stigg(api_key=ingest_api.api_key, base_url=ingest_api.url, max_retries=0)
    late = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(UnprocessableEntityError) as raised:
        client.v1.events.report(
            events=[
                {
                    "customer_id": customer,
                    "event_name": "e",
                    "idempotency_key": "k",
                    "timestamp": late,
                }
            ]
        )
    assert raised.value.status_code == 422
    assert "$.events[0].timestamp" in raised.value.body["error"]["message"]
    bad_key = Stigg(api_key="byoc_wrong", base_url=ingest_api.url, max_retries=0)
    with pytest.raises(AuthenticationError):
        bad_key.v1.events.report(
            events=[{"customer_id": customer, "event_name": "e", "idempotency_key": "k"}]
        )
    assert_nothing_reached_kafka(ingest_api, events_reader, customer)
