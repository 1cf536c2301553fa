"""The gRPC fast path for checks (enforcement/grpc_fastpath.py) answers exactly what grpclib
answers, over real sockets: with the official SDK (grpclib) and grpcio clients, and with an
h2 client that exercises the HTTP/2 corners (padding, priority, flow control, resets, requests
split across writes, other RPCs interleaved on the same connection)."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from enforcement.grpc_fastpath import (
    _ANSWER_HEADERS_BLOCK,
    _ANSWER_TRAILERS_BLOCK,
    MAX_BODY_BYTES,
    MAX_REQUEST_BYTES,
    indexed_only,
)
from tests.enforcement.harness import Runtime
from tests.enforcement.test_sidecar_checks import call

SERVICE = "/stigg.sidecar.v1.SidecarService/"
METERED = SERVICE + "GetMeteredEntitlement"
REQUEST = pb.GetMeteredEntitlementRequest(
    customer_id="c-basic",
    feature_id="f-tokens",
    options=pb.MeteredEntitlementOptions(requested_usage=1),
)


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(message).to_bytes(4, "big") + message


BODY = grpc_frame(bytes(REQUEST))


def stats(runtime: Runtime) -> tuple[int, int]:
    s = runtime.component._grpc_server.stats
    return s.routed, s.decoded


class H2Client:
    """A blocking h2 client on a real socket, for driving the server frame by frame."""

    def __init__(self, port: int, **local_settings: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        if local_settings:
            self.conn.update_settings(
                {getattr(h2.settings.SettingCodes, k): v for k, v in local_settings.items()}
            )
        self.sock.sendall(self.conn.data_to_send())
        self.responses: dict[int, dict[str, Any]] = {}

    def headers(self, path: str = METERED) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ]

    def start(self, body: bytes, *, path: str = METERED, **data_kwargs: Any) -> int:
        """Queue one request (``body`` already gRPC-framed); ``send()`` sends the queue."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path))
        self.conn.send_data(sid, body, end_stream=True, **data_kwargs)
        self.track(sid)
        return sid

    def track(self, sid: int) -> None:
        self.responses[sid] = {"data": b"", "headers": [], "trailers": [], "ended": False}

    def roundtrip(self, body: bytes) -> dict[str, Any]:
        sid = self.start(body)
        self.send()
        return self.answer(sid)

    def send(self, raw: bytes | None = None, *, chunk: int | None = None) -> None:
        data = self.conn.data_to_send() if raw is None else raw
        if chunk is None:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), chunk):  # the server reads it in pieces
            self.sock.sendall(data[i : i + chunk])
            time.sleep(0.001)

    def pump(self, until: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("no answer in time")
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("connection closed by the server")
            for event in self.conn.receive_data(data):
                r = self.responses.get(getattr(event, "stream_id", 0))
                if isinstance(event, h2.events.ResponseReceived) and r is not None:
                    r["headers"] = event.headers
                elif isinstance(event, h2.events.DataReceived) and r is not None:
                    r["data"] += event.data
                elif isinstance(event, h2.events.TrailersReceived) and r is not None:
                    r["trailers"] = event.headers
                elif isinstance(event, h2.events.StreamEnded) and r is not None:
                    r["ended"] = True
                elif isinstance(event, h2.events.StreamReset) and r is not None:
                    r["ended"] = r["reset"] = True
            self.sock.sendall(self.conn.data_to_send())

    def answer(self, sid: int) -> dict[str, Any]:
        self.pump(lambda: self.responses[sid]["ended"])
        return self.responses[sid]

    def open(self, path: str = METERED) -> int:
        """Send the headers of a request whose body ``push`` sends."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path))
        self.track(sid)
        self.send()
        return sid

    def push(self, sid: int, body: bytes, *, end_stream: bool = True) -> int:
        """Send ``body`` as fast as flow control lets us, until all of it is sent or the server
        ends the stream; the bytes sent. Waits only when the windows are closed."""
        r = self.responses[sid]
        sent = 0
        while sent < len(body) and not r["ended"]:
            window = self.conn.local_flow_control_window(sid)
            size = min(len(body) - sent, window, self.conn.max_outbound_frame_size)
            if size <= 0:
                self.pump(lambda: r["ended"] or self.conn.local_flow_control_window(sid) > 0)
                continue
            last = sent + size == len(body)
            self.conn.send_data(sid, body[sent : sent + size], end_stream=end_stream and last)
            self.send()
            sent += size
        return sent

    def close(self) -> None:
        self.sock.close()


def status_of(response: dict[str, Any]) -> tuple[str, str | None]:
    fields = dict(response["trailers"] or response["headers"])
    return fields.get("grpc-status", ""), fields.get("grpc-message")


def metered(response: dict[str, Any]) -> pb.GetMeteredEntitlementResponse:
    data = response["data"]
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5
    return pb.GetMeteredEntitlementResponse().parse(data[5:])


@pytest.fixture
def client(runtime: Runtime) -> Any:
    c = H2Client(runtime.grpc_port)
    yield c
    c.close()


# --- pieces ---------------------------------------------------------------------------------


def test_answer_header_blocks_are_stateless_literals() -> None:
    decoder = hpack.Decoder()
    assert decoder.decode(_ANSWER_HEADERS_BLOCK) == [
        (":status", "200"),
        ("content-type", "application/grpc+proto"),
    ]
    assert decoder.decode(_ANSWER_TRAILERS_BLOCK) == [("grpc-status", "0")]
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing inserted


def test_indexed_only_recognises_stateless_header_blocks() -> None:
    encoder = hpack.Encoder()
    headers = [(":method", "POST"), (":path", METERED), ("te", "trailers")]
    first, second = encoder.encode(headers), encoder.encode(headers)
    assert not indexed_only(first)  # literals with incremental indexing
    assert indexed_only(second)
    assert indexed_only(b"\xff\x80\x01")  # index 255 (continuation bytes)
    assert not indexed_only(b"\xff\x80")  # truncated integer
    assert not indexed_only(b"\x80") and not indexed_only(b"")  # index 0, empty
    assert not indexed_only(second + b"\x20")  # a table size update


# --- the SDK and grpcio reach the fast path and get grpclib's answers -----------------------


def test_repeated_checks_are_routed_and_answer_like_the_sdk(
    runtime: Runtime, client: H2Client
) -> None:
    expected = call(runtime, lambda s: s.get_metered_entitlement(REQUEST))
    routed_before, decoded_before = stats(runtime)
    sids = [client.start(BODY) for _ in range(20)]
    client.send()
    answers = [client.answer(sid) for sid in sids]
    for a in answers:
        assert status_of(a) == ("0", None)
        assert dict(a["headers"])["content-type"] == "application/grpc+proto"
        assert metered(a) == expected
    routed, decoded = stats(runtime)
    assert decoded > decoded_before  # the first ones teach the router
    assert routed - routed_before >= 15  # the rest bypass h2


def test_grpcio_client_checks_are_routed(runtime: Runtime) -> None:
    routed_before, _ = stats(runtime)

    async def run() -> list[bytes]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            stub = channel.unary_unary(METERED)
            return [await stub(bytes(REQUEST)) for _ in range(30)]

    answers = asyncio.run(run())
    parsed = [pb.GetMeteredEntitlementResponse().parse(a) for a in answers]
    assert all(p.has_access and p.entitlement.usage_limit == 1500 for p in parsed)
    assert stats(runtime)[0] - routed_before >= 25


def test_every_check_rpc_of_the_sdk_answers_through_the_fast_path(runtime: Runtime) -> None:
    async def run(s: Any) -> list[Any]:
        out = []
        for _ in range(3):  # later calls reuse indexed headers: routed
            out.append(
                await s.get_boolean_entitlement(
                    pb.GetBooleanEntitlementRequest(customer_id="c-pro", feature_id="f-sso")
                )
            )
            out.append(
                await s.get_enum_entitlement(
                    pb.GetEnumEntitlementRequest(customer_id="c-pro", feature_id="f-tier")
                )
            )
            out.append(await s.get_entitlements(pb.GetEntitlementsRequest(customer_id="c-pro")))
            out.append(
                await s.get_entitlement_v2(
                    pb.GetEntitlementV2Request(customer_id="c-pro", currency_id="credits")
                )
            )
        return out

    answers = call(runtime, run)
    assert [a.has_access for a in answers[0::4]] == [True] * 3
    assert answers[1].entitlement.enum_values == ["basic", "pro"]
    assert len(answers[2].entitlements) >= 5
    assert answers[3].entitlement.credit.currency.currency_id == "credits"
    assert answers[0::4][0] == answers[0::4][2]


# --- errors ---------------------------------------------------------------------------------


def test_invalid_argument_is_a_trailers_only_answer_on_the_routed_path(
    runtime: Runtime, client: H2Client
) -> None:
    for _ in range(3):  # teach the router
        client.roundtrip(BODY)
    routed_before, _ = stats(runtime)
    nan = pb.GetMeteredEntitlementRequest(
        customer_id="c-basic",
        feature_id="f-tokens",
        options=pb.MeteredEntitlementOptions(requested_usage=math.nan),
    )
    answer = client.roundtrip(grpc_frame(bytes(nan)))
    assert status_of(answer) == ("3", "requested_usage must be a finite number")
    assert answer["data"] == b""
    assert stats(runtime)[0] == routed_before + 1


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        # UNIMPLEMENTED: the gRPC status for a compression the server does not support.
        (
            grpc_frame(bytes(REQUEST), compressed=True),
            ("12", "compressed request messages are not supported"),
        ),
        (grpc_frame(bytes(REQUEST))[:-3], ("3", "request message shorter than its length prefix")),
        (BODY[:3], ("3", "request message shorter than its length prefix")),
        (b"", ("3", "request message missing")),
        (BODY + BODY, ("3", "more than one request message (the method is unary)")),
        (b"\x02" + BODY[1:], ("3", "malformed message prefix (compressed flag not 0 or 1)")),
        (grpc_frame(b"\xff\xff\xff"), ("3", "malformed request message")),
    ],
)
def test_malformed_requests_get_a_grpc_error_not_a_broken_connection(
    client: H2Client, body: bytes, answer: tuple[str, str]
) -> None:
    for _ in range(3):  # both layers: h2 decodes the first two, the router takes the third
        assert status_of(client.roundtrip(body)) == answer
    assert metered(client.roundtrip(BODY)).has_access


# --- request size ----------------------------------------------------------------------------

HUGE = b"\x00" + (0x7FFFFFFF).to_bytes(4, "big") + bytes(8 * 1024 * 1024)  # declares 2 GiB
TOO_LARGE = ("8", f"request message larger than {MAX_REQUEST_BYTES} bytes")  # RESOURCE_EXHAUSTED


@pytest.mark.parametrize("routed", [False, True])
def test_an_oversized_check_is_refused_at_its_prefix_and_the_connection_goes_on(
    runtime: Runtime, client: H2Client, routed: bool
) -> None:
    if routed:
        for _ in range(3):  # teach the router this connection's header block
            client.roundtrip(BODY)
    before = stats(runtime)
    sid = client.open()
    sent = client.push(sid, HUGE, end_stream=False)
    answer = client.answer(sid)
    assert status_of(answer) == TOO_LARGE
    assert answer["data"] == b""
    # The stream's window is one message and is never given back to a refused request: the
    # server let in at most that much of the 8 MiB.
    assert sent <= MAX_BODY_BYTES
    after = stats(runtime)
    assert after[0 if routed else 1] == before[0 if routed else 1] + 1  # the layer that refused
    assert metered(client.roundtrip(BODY)).has_access  # same connection, next request


def test_an_oversized_report_is_refused_before_it_is_read(client: H2Client) -> None:
    """grpclib's path (ReportEvents): its own reading would take the declared 2 GiB."""
    sid = client.open(SERVICE + "ReportEvents")
    sent = client.push(sid, HUGE, end_stream=False)
    assert status_of(client.answer(sid)) == TOO_LARGE
    # One message, plus at most the one DATA frame grpclib gave back reading the prefix.
    assert sent <= MAX_BODY_BYTES + client.conn.max_outbound_frame_size
    assert metered(client.roundtrip(BODY)).has_access


@pytest.mark.parametrize(
    ("path", "request_type", "reply_type", "found"),
    [
        (  # the fast path
            "GetBooleanEntitlement",
            pb.GetBooleanEntitlementRequest,
            pb.GetBooleanEntitlementResponse,
            "has_access",
        ),
        (  # grpclib's path
            "ReloadEntitlements",
            pb.ReloadEntitlementsRequest,
            pb.ReloadEntitlementsResponse,
            "entitled_entity_exists",
        ),
    ],
)
def test_a_message_of_exactly_the_limit_is_answered_one_byte_more_is_refused(
    client: H2Client, path: str, request_type: Any, reply_type: Any, found: str
) -> None:
    # Field 1 (customer_id): 1-byte tag, 3-byte length, the id.
    largest = bytes(request_type(customer_id="x" * (MAX_REQUEST_BYTES - 4)))
    assert len(largest) == MAX_REQUEST_BYTES
    sid = client.open(SERVICE + path)
    client.push(sid, grpc_frame(largest))
    answer = client.answer(sid)
    assert status_of(answer) == ("0", None)
    assert getattr(reply_type().parse(answer["data"][5:]), found) is False  # no such customer
    over = bytes(request_type(customer_id="x" * (MAX_REQUEST_BYTES - 3)))
    sid = client.open(SERVICE + path)
    client.push(sid, grpc_frame(over))
    assert status_of(client.answer(sid)) == TOO_LARGE


# --- HTTP/2 corners -------------------------------------------------------------------------


def test_padding_priority_and_byte_by_byte_delivery(runtime: Runtime, client: H2Client) -> None:
    body = BODY
    expected = metered(client.roundtrip(body))
    padded = client.start(body, pad_length=17)
    client.send()
    assert metered(client.answer(padded)) == expected
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, client.headers(), priority_weight=200)
    client.conn.send_data(sid, body, end_stream=True)
    client.track(sid)
    client.send(chunk=3)
    assert metered(client.answer(sid)) == expected
    many = [client.start(body) for _ in range(40)]
    client.send(chunk=7)
    assert all(metered(client.answer(s)) == expected for s in many)


def test_an_answer_waits_for_flow_control_window(runtime: Runtime) -> None:
    # A stream window of 8 bytes: every answer body (20+ bytes) needs WINDOW_UPDATEs.
    client = H2Client(runtime.grpc_port, INITIAL_WINDOW_SIZE=8)
    routed_before, _ = stats(runtime)
    try:
        for _ in range(4):  # decoded (twice), then routed
            sid = client.start(BODY)
            client.send()
            r = client.responses[sid]
            chunks = 0
            while not r["ended"]:
                seen = len(r["data"])
                client.pump(lambda r=r, seen=seen: r["ended"] or len(r["data"]) > seen)
                if not r["ended"]:
                    assert len(r["data"]) - seen <= 8  # never more than the window
                    client.conn.increment_flow_control_window(8, stream_id=sid)
                    client.send()
                    chunks += 1
            assert chunks >= 2
            assert metered(r).has_access
            assert status_of(r) == ("0", None)
        assert stats(runtime)[0] > routed_before
    finally:
        client.close()


def test_a_reset_stream_is_forgotten_and_the_connection_goes_on(client: H2Client) -> None:
    for _ in range(3):
        client.roundtrip(BODY)
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, client.headers())
    client.conn.send_data(sid, BODY[:3])  # not ended
    client.conn.reset_stream(sid)
    client.send()
    assert metered(client.roundtrip(BODY)).has_access


def test_other_rpcs_interleave_and_checks_see_their_effect(runtime: Runtime) -> None:
    """ReportUsage goes through grpclib on the same connection (its header block resets what
    the router learned); the next checks are still right and count the new usage."""

    async def run(s: Any) -> list[float]:
        usages = []
        for _ in range(4):
            m = await s.get_metered_entitlement(
                pb.GetMeteredEntitlementRequest(customer_id="c-pro", feature_id="f-images")
            )
            usages.append(m.entitlement.current_usage)
            await s.report_usage(
                pb.ReportUsageRequest(customer_id="c-pro", feature_id="f-images", value=2)
            )
        final = await s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(customer_id="c-pro", feature_id="f-images")
        )
        usages.append(final.entitlement.current_usage)
        return usages

    usages = call(runtime, run)
    start = usages[0]
    assert usages == [start, start + 2, start + 4, start + 6, start + 8]


def test_unknown_methods_still_get_grpclibs_answer(client: H2Client) -> None:
    sid = client.start(grpc_frame(b""), path=SERVICE + "NoSuchMethod")
    client.send()
    assert status_of(client.answer(sid))[0] == "12"  # UNIMPLEMENTED


# --- HPACK table changes: a remembered header block must not outlive its meaning -----------


def _raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def _literal_indexed(name: str, value: str) -> bytes:
    """HPACK literal WITH incremental indexing, new name: the client's table grows."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x40" + bytes([len(n)]) + n + bytes([len(v)]) + v


class RawConnection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _raw_frame(4, 0, 0, b""))
        self.decoder = hpack.Decoder()
        self.buffer = b""

    def frame(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    head, self.buffer = self.buffer[: 9 + length], self.buffer[9 + length :]
                    sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                    return head[3], head[4], sid, head[9:]
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buffer += data

    def request(self, sid: int, block: bytes, body: bytes) -> tuple[dict[str, str], bytes]:
        self.sock.sendall(
            _raw_frame(1, 0x4, sid, block) + _raw_frame(0, 0x1, sid, grpc_frame(body))
        )
        fields: dict[str, str] = {}
        data = b""
        while True:
            kind, flags, fsid, payload = self.frame()
            if kind == 4 and not flags & 1:
                self.sock.sendall(_raw_frame(4, 1, 0, b""))  # SETTINGS ACK
            elif kind == 1:
                fields.update(dict(self.decoder.decode(payload)))  # every block, in order
                if fsid == sid and flags & 1:
                    return fields, data
            elif kind == 0 and fsid == sid:
                data += payload
            elif kind in (3, 7):
                raise AssertionError(f"stream reset / GOAWAY: {payload.hex()}")

    def close(self) -> None:
        self.sock.close()


def test_a_header_block_is_forgotten_when_the_client_table_changes(runtime: Runtime) -> None:
    """The same indexed bytes mean GetMeteredEntitlement, then (after the client's table
    changed) GetBooleanEntitlement: the second must not be answered as the first."""
    boolean = pb.GetBooleanEntitlementRequest(customer_id="c-pro", feature_id="f-sso")
    expected = call(runtime, lambda s: s.get_boolean_entitlement(boolean))

    def table_for(path: str) -> bytes:  # leaves 62=:path, 63=content-type, 64=te, 65=:authority
        return (
            b"\x83\x86"
            + _literal_indexed(":authority", "127.0.0.1")
            + _literal_indexed("te", "trailers")
            + _literal_indexed("content-type", "application/grpc")
            + _literal_indexed(":path", path)
        )

    same_bytes = b"\x83\x86\xbe\xbf\xc0\xc1"  # :method, :scheme, then dynamic 62-65
    conn = RawConnection(runtime.grpc_port)
    routed_before, _ = stats(runtime)
    try:
        for sid, block in [(1, table_for(METERED)), (3, same_bytes), (5, same_bytes)]:
            fields, data = conn.request(sid, block, bytes(REQUEST))
            assert fields["grpc-status"] == "0"
            assert pb.GetMeteredEntitlementResponse().parse(data[5:]).has_access
        assert stats(runtime)[0] == routed_before + 1  # sid 5 was routed
        conn.request(7, table_for(SERVICE + "GetBooleanEntitlement"), bytes(boolean))
        fields, data = conn.request(9, same_bytes, bytes(boolean))
        assert fields["grpc-status"] == "0"
        assert pb.GetBooleanEntitlementResponse().parse(data[5:]) == expected
    finally:
        conn.close()


def test_checks_of_several_methods_interleaved_are_all_routed(
    runtime: Runtime, client: H2Client
) -> None:
    boolean = grpc_frame(
        bytes(pb.GetBooleanEntitlementRequest(customer_id="c-pro", feature_id="f-sso"))
    )
    for _ in range(2):  # each method's headers indexed, then learned
        client.roundtrip(BODY)
        sid = client.start(boolean, path=SERVICE + "GetBooleanEntitlement")
        client.send()
        client.answer(sid)
    routed_before, _ = stats(runtime)
    for _ in range(10):
        assert metered(client.roundtrip(BODY)).has_access
        sid = client.start(boolean, path=SERVICE + "GetBooleanEntitlement")
        client.send()
        answer = client.answer(sid)
        assert pb.GetBooleanEntitlementResponse().parse(answer["data"][5:]).has_access
    assert stats(runtime)[0] - routed_before == 20
