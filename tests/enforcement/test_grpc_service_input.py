"""Bad input on the SidecarService (enforcement/grpc_service.py) gets a clear gRPC error naming
what is wrong (INVALID_ARGUMENT; UNIMPLEMENTED for compression), never UNKNOWN with an error
traceback in the log, and usage reports get the bounds REST applies (event times, numeric
dimensions, requested usage, enums, empty batches). Over real sockets: grpcio for whole
messages, an h2 client for framing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import betterproto
import betterproto.lib.google.protobuf as pb_google
import grpc
import pytest
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.events import UsageEvent
from tests.enforcement.harness import ControlPlaneProcess, Runtime
from tests.enforcement.test_grpc_fastpath import BODY, SERVICE, H2Client, grpc_frame, status_of
from tests.enforcement.test_usage_reporting import new_customer

METHODS = [
    "GetEntitlements",
    "GetEntitlement",
    "GetBooleanEntitlement",
    "GetNumericEntitlement",
    "GetMeteredEntitlement",
    "GetEnumEntitlement",
    "ReportUsage",
    "ReportEvents",
    "ReloadEntitlements",
    "ReportUsageBulk",
    "GetEntitlementV2",
    "GetEntitlementsStateV2",
]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FUTURE = "is more than 300s in the future"
BEFORE_FIRST_HOUR = "is before 2025-01-01T00:00:00Z, the first hour the platform rolls up"


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Client mistakes leave no error (traceback) of the gRPC server in the log (the runtime
    runs in this process: its records reach caplog)."""
    caplog.set_level(logging.INFO)
    yield
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("grpclib", "h2", "enforcement"))
    ]
    assert errors == []


@pytest.fixture(scope="module")
def channel(runtime: Runtime) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def produced(runtime: Runtime) -> Iterator[list[UsageEvent]]:
    """ReportEvents' sink, recording (Kafka in production; this runtime has no broker)."""
    service = runtime.component.grpc_service
    events: list[UsageEvent] = []

    async def sink(environment: str, batch: list[UsageEvent]) -> None:
        events.extend(batch)

    original, service.events_sink = service.events_sink, sink
    yield events
    service.events_sink = original


@pytest.fixture
def h2(runtime: Runtime) -> Iterator[H2Client]:
    client = H2Client(runtime.grpc_port)
    yield client
    client.close()


def rpc(channel: grpc.Channel, method: str, request: bytes | betterproto.Message) -> Any:
    """The answer bytes, or (status code, details) of a gRPC error."""
    stub = channel.unary_unary(SERVICE + method)
    try:
        return stub(request if isinstance(request, bytes) else bytes(request), timeout=30)
    except grpc.RpcError as err:
        return err.code(), err.details()


def with_timestamp(message: bytes, field: int, seconds: int, nanos: int = 0) -> bytes:
    """``message`` with a google.protobuf.Timestamp field as sent, even one betterproto could
    not turn into a datetime."""
    ts = bytes(pb_google.Timestamp(seconds=seconds, nanos=nanos))
    return message + bytes([field << 3 | 2, len(ts)]) + ts


def repeated(field: int, items: list[bytes]) -> bytes:
    """A repeated message field of already serialised (small) items."""
    assert all(len(item) < 128 for item in items)  # one-byte lengths
    return b"".join(bytes([field << 3 | 2, len(item)]) + item for item in items)


def event(key: str, **fields: Any) -> pb.Event:
    return pb.Event(event_name="api_call", customer_id="c-pro", idempotency_key=key, **fields)


def usage(customer: str, **fields: Any) -> pb.ReportUsageRequest:
    return pb.ReportUsageRequest(
        **{"customer_id": customer, "feature_id": "f-calls", "value": 1, **fields}
    )


def current_usage(channel: grpc.Channel, customer: str) -> float:
    request = pb.GetMeteredEntitlementRequest(customer_id=customer, feature_id="f-calls")
    answer = rpc(channel, "GetMeteredEntitlement", request)
    return pb.GetMeteredEntitlementResponse().parse(answer).entitlement.current_usage


def number(value: float) -> pb.EventDimensionValue:
    return pb.EventDimensionValue(number_value=value)


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_garbage_bytes_are_invalid_argument(channel: grpc.Channel, method: str) -> None:
    assert rpc(channel, method, b"\xff\xff\xff\xff") == (INVALID, "malformed request message")


@pytest.mark.parametrize("method", METHODS)
def test_a_request_without_a_message_is_invalid_argument(h2: H2Client, method: str) -> None:
    sid = h2.conn.get_next_available_stream_id()
    h2.conn.send_headers(sid, h2.headers(SERVICE + method), end_stream=True)
    h2.track(sid)
    h2.send()
    assert status_of(h2.answer(sid)) == ("3", "request message missing")


@pytest.mark.parametrize(
    ("method", "extra_headers", "body", "answer"),
    [
        # UNIMPLEMENTED: the gRPC status for a compression the server does not support.
        (
            "ReportUsage",
            [],
            grpc_frame(bytes(usage("c-pro")), compressed=True),
            ("12", "compressed request messages are not supported"),
        ),
        (  # grpc-encoding sends even a check to grpclib's path
            "GetBooleanEntitlement",
            [("grpc-encoding", "gzip")],
            grpc_frame(bytes(pb.GetBooleanEntitlementRequest(customer_id="c-pro")), True),
            ("12", "compressed request messages are not supported"),
        ),
        (
            "ReportUsage",
            [],
            b"\x00\x00\x00\x10\x00" + bytes(usage("c-pro"))[:4],  # declares 4096 bytes
            ("3", "request message shorter than its length prefix"),
        ),
        ("ReportEvents", [], b"\x00\x00", ("3", "request message shorter than its length prefix")),
        ("ReloadEntitlements", [], grpc_frame(b"\xff\xff"), ("3", "malformed request message")),
    ],
)
def test_framing_errors_on_grpclib_methods(
    h2: H2Client,
    method: str,
    extra_headers: list[tuple[str, str]],
    body: bytes,
    answer: tuple[str, str],
) -> None:
    sid = h2.conn.get_next_available_stream_id()
    h2.conn.send_headers(sid, h2.headers(SERVICE + method) + extra_headers)
    h2.conn.send_data(sid, body, end_stream=True)
    h2.track(sid)
    h2.send()
    assert status_of(h2.answer(sid)) == answer
    assert status_of(h2.roundtrip(BODY)) == ("0", None)  # the connection goes on


@pytest.mark.parametrize(
    ("seconds", "nanos", "problem"),
    [
        (10**13, 0, "seconds is out of range (years 0001 to 9999)"),
        (-(10**13), 0, "seconds is out of range (years 0001 to 9999)"),
        (1_700_000_000, 1_000_000_000, "nanos must be in [0, 999999999]"),
        (1_700_000_000, -1, "nanos must be in [0, 999999999]"),
    ],
)
def test_unreadable_timestamps_are_named(
    channel: grpc.Channel, produced: list[UsageEvent], seconds: int, nanos: int, problem: str
) -> None:
    customer = "c-pro"
    before = current_usage(channel, customer)
    good = bytes(event("ok"))
    bad = with_timestamp(bytes(event("bad")), 6, seconds, nanos)
    assert rpc(channel, "ReportEvents", repeated(1, [good, bad])) == (
        INVALID,
        f"events[1].timestamp.{problem}",
    )
    one = with_timestamp(bytes(usage(customer)), 7, seconds, nanos)
    assert rpc(channel, "ReportUsage", one) == (INVALID, f"timestamp.{problem}")
    assert rpc(channel, "ReportUsageBulk", repeated(1, [bytes(usage(customer)), one])) == (
        INVALID,
        f"usages[1].timestamp.{problem}",
    )
    assert produced == [] and current_usage(channel, customer) == before


# --- the bounds REST applies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (event("e", timestamp=datetime(2999, 1, 1, tzinfo=UTC)), f"timestamp {FUTURE}"),
        (
            event("e", timestamp=datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
            "timestamp " + BEFORE_FIRST_HOUR,
        ),
        (event("e", timestamp=datetime(1, 1, 1, tzinfo=UTC)), f"timestamp {BEFORE_FIRST_HOUR}"),
        (
            event("e", timestamp=datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)),
            f"timestamp {BEFORE_FIRST_HOUR}",
        ),
        (
            event("e", dimensions={"tokens": number(1.7e308)}),
            "dimensions.tokens is out of range (at most 9007199254740991 in absolute value)",
        ),
        (
            event("e", dimensions={"tokens": number(-(2.0**53))}),
            "dimensions.tokens is out of range (at most 9007199254740991 in absolute value)",
        ),
        (event("e", dimensions={"": number(100)}), "dimensions: a name is empty"),
        (
            event("e", dimensions={"tokens": number(float("inf"))}),
            "dimensions.tokens is not a finite number",
        ),
    ],
)
def test_report_events_refuses_what_rest_refuses(
    channel: grpc.Channel, produced: list[UsageEvent], bad: pb.Event, problem: str
) -> None:
    request = pb.ReportEventsRequest(events=[event("first"), bad])
    assert rpc(channel, "ReportEvents", request) == (INVALID, f"events[1].{problem}")
    assert produced == []  # nothing of the batch is durable


def test_report_events_refuses_an_event_just_past_the_skew(
    channel: grpc.Channel, produced: list[UsageEvent]
) -> None:
    ahead = datetime.now(UTC) + timedelta(seconds=400)
    request = pb.ReportEventsRequest(events=[event("e", timestamp=ahead)])
    assert rpc(channel, "ReportEvents", request) == (INVALID, f"events[0].timestamp {FUTURE}")
    assert produced == []


def test_report_events_accepts_the_edges_of_the_bounds(
    channel: grpc.Channel, produced: list[UsageEvent]
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=240)  # within the 300 s skew
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first_hour = datetime(2025, 1, 1, tzinfo=UTC)
    request = pb.ReportEventsRequest(
        events=[
            event("soon", timestamp=soon, dimensions={"tokens": number(2.0**53 - 1)}),
            event("first", timestamp=first_hour, dimensions={"tokens": number(-(2.0**53 - 1))}),
            event("now"),
        ]
    )
    before_ms = int(time.time() * 1000)
    assert pb_google.Empty().parse(rpc(channel, "ReportEvents", request)) == pb_google.Empty()
    try:
        first, second, third = produced
        assert first.timestamp == (soon - epoch) // timedelta(milliseconds=1)
        assert first.dimensions == {"tokens": 2.0**53 - 1}
        assert second.timestamp == (first_hour - epoch) // timedelta(milliseconds=1)
        assert third.timestamp >= before_ms  # the receive time
    finally:
        produced.clear()


def test_the_future_bound_is_the_services_skew_setting(
    runtime: Runtime, channel: grpc.Channel, produced: list[UsageEvent]
) -> None:
    """The skew comes from the constructor (settings.api.max_future_skew_s), not a constant."""
    service = runtime.component.grpc_service
    assert service.max_future_ms == runtime.settings.api.max_future_skew_s * 1000
    ahead = datetime.now(UTC) + timedelta(seconds=120)
    service.max_future_ms = 60_000
    try:
        request = pb.ReportEventsRequest(events=[event("e", timestamp=ahead)])
        assert rpc(channel, "ReportEvents", request) == (
            INVALID,
            "events[0].timestamp is more than 60s in the future",
        )
    finally:
        service.max_future_ms = int(runtime.settings.api.max_future_skew_s * 1000)
    assert produced == []


@pytest.mark.parametrize(
    ("at", "problem"),
    [
        (datetime(2999, 1, 1, tzinfo=UTC), FUTURE),
        (datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), BEFORE_FIRST_HOUR),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), BEFORE_FIRST_HOUR),
    ],
)
def test_report_usage_refuses_times_rest_refuses(
    control_plane: ControlPlaneProcess,
    runtime: Runtime,
    channel: grpc.Channel,
    at: datetime,
    problem: str,
) -> None:
    customer = new_customer(control_plane, runtime)
    assert rpc(channel, "ReportUsage", usage(customer, timestamp=at)) == (
        INVALID,
        f"timestamp {problem}",
    )
    bulk = pb.ReportUsageBulkRequest(usages=[usage(customer), usage(customer, timestamp=at)])
    assert rpc(channel, "ReportUsageBulk", bulk) == (INVALID, f"usages[1].timestamp {problem}")
    assert current_usage(channel, customer) == 0  # nothing applied
    now = datetime.now(UTC)
    answer = pb.ReportUsageResponse().parse(
        rpc(channel, "ReportUsage", usage(customer, timestamp=now))
    )
    assert answer.current_usage == 1


# --- validation as on REST ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "check"),
    [
        (
            "GetMeteredEntitlement",
            pb.GetMeteredEntitlementRequest(
                customer_id="c-basic",
                feature_id="f-tokens",
                options=pb.MeteredEntitlementOptions(requested_usage=-1e9),
            ),
        ),
        (
            "GetEntitlement",
            pb.GetEntitlementRequest(
                customer_id="c-basic",
                feature_id="f-tokens",
                options=pb.GetEntitlementOptions(requested_usage=-1),
            ),
        ),
        (
            "GetEntitlementV2",
            pb.GetEntitlementV2Request(
                customer_id="c-basic",
                feature_id="f-tokens",
                options=pb.GetEntitlementOptions(requested_usage=-1),
            ),
        ),
        (
            "GetEntitlementV2",
            pb.GetEntitlementV2Request(
                customer_id="c-pro",
                currency_id="credits",
                options=pb.GetEntitlementOptions(requested_usage=-1e12),
            ),
        ),
    ],
)
def test_negative_requested_usage_is_invalid_argument(
    channel: grpc.Channel, method: str, check: betterproto.Message
) -> None:
    for _ in range(3):  # both fast-path layers: decoded, then routed
        assert rpc(channel, method, check) == (INVALID, "requested_usage must be at least 0")


def test_zero_requested_usage_is_still_a_check(channel: grpc.Channel) -> None:
    request = pb.GetMeteredEntitlementRequest(
        customer_id="c-basic",
        feature_id="f-tokens",
        options=pb.MeteredEntitlementOptions(requested_usage=0),
    )
    assert (
        pb.GetMeteredEntitlementResponse()
        .parse(rpc(channel, "GetMeteredEntitlement", request))
        .has_access
    )


@pytest.mark.parametrize("value", [3, 7, 2**64 - 1])
def test_an_undefined_update_behavior_is_invalid_argument(
    channel: grpc.Channel, value: int
) -> None:
    before = current_usage(channel, "c-pro")
    varint = bytearray()
    rest = value
    while rest > 0x7F:
        varint.append(rest & 0x7F | 0x80)
        rest >>= 7
    varint.append(rest)
    request = bytes(usage("c-pro")) + b"\x28" + bytes(varint)  # field 5, update_behavior
    assert rpc(channel, "ReportUsage", request) == (
        INVALID,
        f"update_behavior {value} is not a UsageUpdateBehavior value",
    )
    bulk = repeated(1, [request])
    assert rpc(channel, "ReportUsageBulk", bulk) == (
        INVALID,
        f"usages[0].update_behavior {value} is not a UsageUpdateBehavior value",
    )
    assert current_usage(channel, "c-pro") == before


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1.7e308, "exceeds ±(2^53-1)"),
        (-(2.0**53), "exceeds ±(2^53-1)"),
        (2.0**35 + 0.5, "must be below 2^35 in magnitude when fractional"),
        (float("inf"), "must be finite"),
        (float("nan"), "must be finite"),
    ],
)
def test_report_usage_values_have_rest_s_bounds(
    channel: grpc.Channel, value: float, problem: str
) -> None:
    """Two values near 1.7e308 made the counter inf, a SET then NaN, and the usage.reports
    consumer failed for ever on it (F57): refused as REST refuses them."""
    before = current_usage(channel, "c-pro")
    assert rpc(channel, "ReportUsage", usage("c-pro", value=value)) == (
        INVALID,
        f"value {problem}",
    )
    bulk = pb.ReportUsageBulkRequest(usages=[usage("c-pro"), usage("c-pro", value=value)])
    assert rpc(channel, "ReportUsageBulk", bulk) == (INVALID, f"usages[1].value {problem}")
    assert current_usage(channel, "c-pro") == before


def test_report_usage_rounds_values_as_rest_does(channel: grpc.Channel) -> None:
    before = current_usage(channel, "c-pro")
    answer = pb.ReportUsageResponse().parse(
        rpc(channel, "ReportUsage", usage("c-pro", value=0.123456789))
    )
    assert answer.current_usage == pytest.approx(before + 0.12346, abs=1e-9)
    assert current_usage(channel, "c-pro") == pytest.approx(before + 0.12346, abs=1e-9)


def test_empty_batches_are_invalid_argument(
    channel: grpc.Channel, produced: list[UsageEvent]
) -> None:
    assert rpc(channel, "ReportEvents", pb.ReportEventsRequest()) == (
        INVALID,
        "at least one event is required",
    )
    assert rpc(channel, "ReportUsageBulk", pb.ReportUsageBulkRequest()) == (
        INVALID,
        "at least one usage is required",
    )
    assert produced == []
