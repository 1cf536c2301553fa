"""A fast path for the unary check RPCs inside grpclib's HTTP/2 protocol.

Profiled at 2,000 GetMeteredEntitlement/s (docs/benchmarks-enforcement.md), grpclib on h2 spent
~300 us of CPU per check: a task per request with its Stream/Wrapper/Deadline objects, three
awaited sends and three socket writes per answer; and h2 itself (pure Python) ~100 us more,
mostly HPACK-decoding the request headers and building the answer's two header frames. A check
needs none of it: it is answered from memory without awaiting anything.

Two layers, each falling back to the one below for anything it does not handle:

1. Frame router (:class:`_FastProtocol`). A gRPC client sends the same request headers again
   and again; once its HPACK encoder has them in its dynamic table, the header block is a few
   "indexed field" bytes, identical for every request to the same method. Such a block is
   stateless (decoding it changes no HPACK table), so after h2 has decoded it once (layer 2)
   its bytes are remembered as "a check of method M". A later HEADERS frame carrying exactly
   those bytes opens a stream that h2 never sees: its DATA is collected, and when it ends the
   answer is written as pre-encoded frames (HEADERS ``:status 200`` + ``content-type``, DATA,
   trailers ``grpc-status: 0``; literal header fields without indexing, so no HPACK state is
   involved on either side). Whenever h2 is given a header block that may change its
   decoder's table (anything but indexed fields), the remembered blocks are forgotten, so a
   remembered block always means what it meant when h2 decoded it. Frames of streams h2
   does not know (late WINDOW_UPDATE, RST_STREAM, PRIORITY) are consumed here. Flow control
   is kept exactly: answer DATA waits for the connection window (h2's own counter,
   decremented by what is sent here) and the stream's window; request DATA received here is
   given back with connection WINDOW_UPDATEs once its request is answered. Everything else
   (other RPCs, SETTINGS, PING, GOAWAY, connection WINDOW_UPDATE) goes to h2 in arrival
   order.
2. Event path (:class:`_FastEvents`): a check whose headers h2 decoded (the first of each
   method, or while the client's table changes) is answered synchronously from h2's events,
   through h2 (no task, no grpclib Stream); every other request goes to grpclib, whose
   handlers read their message with :func:`read_message`.

Answers are what grpclib sends for the same handler result: a ``GRPCError`` becomes a
trailers-only answer with its status and message, any other exception ``UNKNOWN`` /
``Internal Server Error`` (logged). All output of one read leaves in one ``send()``.

Request size: a request message may hold at most ``MAX_REQUEST_BYTES``. A larger one is
refused with ``RESOURCE_EXHAUSTED`` as soon as its 5-byte prefix declares it, on every path,
and a stream's window is one such message: request bytes are given back only when their
request is finished (grpclib: when read), so a stream can make the server hold about one
message and a connection at most its window (grpclib's 4 MiB), however many streams it opens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

import h2.connection
import h2.events
import h2.settings
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.metadata import encode_grpc_message
from grpclib.protocol import EventsProcessor, H2Protocol
from grpclib.server import Handler, Server, Stream
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hpack.hpack import encode_integer

log = logging.getLogger(__name__)

FastMethod = Callable[[Any], Any]  # request message -> reply (message or grpc_codec.Encoded)
_Target = tuple[FastMethod, type, type]  # handler, request type, reply type

_CONTENT_TYPES = frozenset({"application/grpc", "application/grpc+proto"})
_REPLY_TYPE = "application/grpc+proto"
_OK_HEADERS = [(":status", "200"), ("content-type", _REPLY_TYPE)]
_OK_TRAILERS = [("grpc-status", "0")]
MAX_REQUEST_BYTES = 1024 * 1024  # the largest request message; a check is a few hundred bytes
_PREFIX_BYTES = 5  # gRPC message prefix: compressed flag, then the 4-byte big-endian length
MAX_BODY_BYTES = _PREFIX_BYTES + MAX_REQUEST_BYTES  # a unary request's DATA at most
_WINDOW_UPDATE_AT = 65_536  # give the connection window back in steps of this many bytes
_PREFACE_BYTES = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# HTTP/2 frame types and flags (RFC 9113 section 6).
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 2, 3, 8, 9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20


def _literal(name: str, value: str) -> bytes:
    """HPACK "literal header field without indexing, new name" (RFC 7541 6.2.2)."""
    n, v = name.encode("ascii"), value.encode("ascii")
    return b"\x00" + bytes(encode_integer(len(n), 7)) + n + bytes(encode_integer(len(v), 7)) + v


_STATUS_200 = b"\x88"  # indexed field 8 of the static table: ":status: 200"
_ANSWER_HEADERS_BLOCK = _STATUS_200 + _literal("content-type", _REPLY_TYPE)
_ANSWER_TRAILERS_BLOCK = _literal("grpc-status", "0")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def indexed_only(block: bytes) -> bool:
    """True when a header block is only "indexed header field" representations, which read the
    HPACK tables without changing them (RFC 7541 6.1)."""
    i, n = 0, len(block)
    if not n:
        return False
    while i < n:
        first = block[i]
        if not first & 0x80 or first == 0x80:  # a literal / size update, or invalid index 0
            return False
        i += 1
        if first == 0xFF:  # index >= 127: continuation bytes
            while i < n and block[i] & 0x80:
                i += 1
            if i >= n:
                return False
            i += 1
    return True


def _target_of(headers: Any, fast: dict[str, _Target]) -> _Target | None:
    """The fast target of a request's headers, or None if grpclib must handle it."""
    path = method = content_type = te = None
    for name, value in headers:  # str pairs: grpclib's h2 config decodes ASCII
        if name == ":path":
            path = value
        elif name == ":method":
            method = value
        elif name == "content-type":
            content_type = value
        elif name == "te":
            te = value
        elif name == "grpc-encoding" and value != "identity":
            return None
    target = fast.get(path)  # type: ignore[arg-type]
    if target is None or method != "POST" or content_type not in _CONTENT_TYPES:
        return None
    return target if te == "trailers" else None


_Problem = tuple[Status, str]
_TRUNCATED = "request message shorter than its length prefix"


def _prefix_problem(prefix: bytes | bytearray) -> _Problem | None:
    """Why the message a 5-byte prefix announces cannot be read (None if it can)."""
    if prefix[0] == 1:
        # No compression is supported; the gRPC status table gives UNIMPLEMENTED for that.
        return Status.UNIMPLEMENTED, "compressed request messages are not supported"
    if prefix[0] != 0:
        return Status.INVALID_ARGUMENT, "malformed message prefix (compressed flag not 0 or 1)"
    if int.from_bytes(prefix[1:_PREFIX_BYTES], "big") > MAX_REQUEST_BYTES:
        return Status.RESOURCE_EXHAUSTED, f"request message larger than {MAX_REQUEST_BYTES} bytes"
    return None


def _body_problem(body: bytes | bytearray, *, complete: bool) -> _Problem | None:
    """Why a unary request body cannot be exactly one message (None if it can, or may still:
    ``complete`` False means more DATA may follow). Visible problems are found early, so an
    oversized or malformed body is refused before it is received."""
    if len(body) < _PREFIX_BYTES:
        if not complete:
            return None
        if not body:
            return Status.INVALID_ARGUMENT, "request message missing"
        return Status.INVALID_ARGUMENT, _TRUNCATED
    problem = _prefix_problem(body)
    if problem is not None:
        return problem
    size = _PREFIX_BYTES + int.from_bytes(body[1:_PREFIX_BYTES], "big")
    if len(body) > size:
        return Status.INVALID_ARGUMENT, "more than one request message (the method is unary)"
    if complete and len(body) < size:
        return Status.INVALID_ARGUMENT, _TRUNCATED
    return None


def decode(codec: CodecBase, message: bytes, request_type: type) -> Any:
    """A request message, or INVALID_ARGUMENT: undecodable bytes are the client's mistake."""
    try:
        return codec.decode(message, request_type)
    except Exception:
        log.debug("undecodable %s", request_type.__name__, exc_info=True)
        raise GRPCError(Status.INVALID_ARGUMENT, "malformed request message") from None


async def read_message(stream: Stream[Any, Any]) -> bytes:
    """The one request message of a unary call on grpclib's path, checked as the fast path
    checks it. grpclib's own ``recv_message`` reads (and gives window back for) whatever
    length a prefix declares, up to 2 GiB, and fails with an exception (UNKNOWN, an error
    traceback) on a compressed or truncated message, or returns None for none."""
    h2_stream = stream._stream  # grpclib's HTTP/2 stream: there is no public raw read
    try:
        body = await h2_stream.recv_data(_PREFIX_BYTES)
        if len(body) == _PREFIX_BYTES and _prefix_problem(body) is None:
            body += await h2_stream.recv_data(int.from_bytes(body[1:], "big"))
    except AssertionError:  # grpclib's Buffer: the stream ended inside the bytes asked for
        raise GRPCError(Status.INVALID_ARGUMENT, _TRUNCATED) from None
    problem = _body_problem(body, complete=True)
    if problem is not None:
        raise GRPCError(*problem)
    return body[_PREFIX_BYTES:]


def _reply(target: _Target, data: bytes, codec: Any) -> tuple[bytes | None, Status, str | None]:
    """Run one check: (answer bytes, OK, None) or (None, status, message)."""
    method, request_type, reply_type = target
    problem = _body_problem(data, complete=True)
    if problem is not None:
        return None, *problem
    try:
        request = decode(codec, data[_PREFIX_BYTES:], request_type)
        return codec.encode(method(request), reply_type), Status.OK, None
    except GRPCError as exc:
        return None, exc.status, exc.message
    except Exception:
        log.exception("gRPC check failed")
        return None, Status.UNKNOWN, "Internal Server Error"


def _grpc_frame(message: bytes) -> bytes:
    # gRPC message framing: compressed flag 0, 4-byte big-endian length, the message.
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _error_headers(status: Status, message: str | None) -> list[tuple[str, str]]:
    headers = [*_OK_HEADERS, ("grpc-status", str(status.value))]
    if message is not None:
        headers.append(("grpc-message", encode_grpc_message(message)))
    return headers


class _Call:
    """One check request being received."""

    __slots__ = ("data", "received", "target")

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.data = bytearray()
        self.received = 0  # flow-controlled bytes, given back when the request is finished


class _Out:
    """An answer body waiting for flow-control window (routed streams keep their own)."""

    __slots__ = ("body", "window")

    def __init__(self, body: bytes, window: int) -> None:
        self.body = bytearray(body)
        self.window = window


# --- layer 2: h2 events ---------------------------------------------------------------------


class _FastEvents(EventsProcessor):
    def __init__(self, handler: Any, connection: Any, protocol: _FastProtocol) -> None:
        super().__init__(handler, connection)
        self._protocol = protocol
        self._calls: dict[int, _Call] = {}
        self._unsent: dict[int, bytearray] = {}  # answers' bodies waiting for window
        self.processors[h2.events.RequestReceived] = self._request_received
        self.processors[h2.events.DataReceived] = self._data_received
        self.processors[h2.events.StreamEnded] = self._stream_ended
        self.processors[h2.events.StreamReset] = self._stream_reset
        self.processors[h2.events.WindowUpdated] = self._window_updated
        self.processors[h2.events.RemoteSettingsChanged] = self._settings_changed

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        target = None if event.stream_ended else _target_of(event.headers, self._protocol.fast)
        self._protocol.learned(event.stream_id, target)
        if target is None:
            self.process_request_received(event)  # grpclib, as before
            return
        self._calls[event.stream_id] = _Call(target)
        self.connection.streams_started += 1

    def _data_received(self, event: h2.events.DataReceived) -> None:
        call = self._calls.get(event.stream_id)
        if call is None:
            self.process_data_received(event)
            return
        call.data += event.data
        call.received += event.flow_controlled_length
        if event.stream_ended is not None:
            return  # answered by _stream_ended, next
        problem = _body_problem(call.data, complete=False)
        if problem is not None:  # refused before the rest of it is sent
            del self._calls[event.stream_id]
            self._protocol.stats.decoded += 1
            h2c = self._protocol.h2c
            h2c.send_headers(event.stream_id, _error_headers(*problem), end_stream=True)
            # NO_ERROR: stop sending the request (RFC 9113 8.1); reset before the window is
            # given back, so only the connection's window grows, not this stream's.
            h2c.reset_stream(event.stream_id, ErrorCodes.NO_ERROR)
            h2c.acknowledge_received_data(call.received, event.stream_id)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        call = self._calls.pop(event.stream_id, None)
        if call is None:
            self.process_stream_ended(event)
            return
        h2c = self._protocol.h2c
        if call.received:  # sent with this read's single write
            h2c.acknowledge_received_data(call.received, event.stream_id)
        self._protocol.stats.decoded += 1
        answer, status, message = _reply(call.target, bytes(call.data), self._protocol.codec)
        if answer is None:
            h2c.send_headers(event.stream_id, _error_headers(status, message), end_stream=True)
            return
        h2c.send_headers(event.stream_id, _OK_HEADERS)
        self._unsent[event.stream_id] = bytearray(_grpc_frame(answer))
        self._send_unsent(event.stream_id)
        self.connection.streams_succeeded += 1

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        call = self._calls.pop(event.stream_id, None)
        if call is not None:
            if call.received:
                self._protocol.h2c.acknowledge_received_data(call.received, event.stream_id)
            return
        if self._unsent.pop(event.stream_id, None) is not None:
            return
        self.process_stream_reset(event)

    def _window_updated(self, event: h2.events.WindowUpdated) -> None:
        self.process_window_updated(event)
        self._send_unsent()
        self._protocol.window_grew()

    def _settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        self.process_remote_settings_changed(event)
        self._send_unsent()
        self._protocol.settings_changed(event)

    def _send_unsent(self, only: int | None = None) -> None:
        """Send answer bodies as far as flow control allows, then their trailers."""
        if not self._unsent:
            return
        h2c = self._protocol.h2c
        for stream_id in [only] if only is not None else list(self._unsent):
            body = self._unsent[stream_id]
            while body:
                size = min(
                    len(body),
                    h2c.local_flow_control_window(stream_id),
                    h2c.max_outbound_frame_size,
                )
                if size <= 0:
                    break
                h2c.send_data(stream_id, bytes(body[:size]))
                del body[:size]
            if body:
                continue  # waits for a WINDOW_UPDATE
            h2c.send_headers(stream_id, _OK_TRAILERS, end_stream=True)
            del self._unsent[stream_id]


# --- layer 1: frames ------------------------------------------------------------------------


class FastStats:
    """Checks answered by each layer (all connections of a server): for metrics and tests."""

    __slots__ = ("decoded", "routed")

    def __init__(self) -> None:
        # Answers, refusals included.
        self.routed = 0  # layer 1: header block recognised, h2 bypassed
        self.decoded = 0  # layer 2: h2 decoded the headers, answered from its events


class _FastProtocol(H2Protocol):
    def __init__(
        self, *args: Any, fast: dict[str, _Target], codec: CodecBase, stats: FastStats
    ) -> None:
        super().__init__(*args)
        self.fast = fast
        self.codec = codec
        self.stats = stats

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.processor = _FastEvents(self.handler, self.connection, self)
        self.h2c: h2.connection.H2Connection = self.connection._connection
        self._transport = transport
        self._buffer = bytearray()
        self._preface = _PREFACE_BYTES
        self._continuation = False  # h2 is in the middle of a header block
        self._blocks: dict[bytes, _Target] = {}  # header block bytes -> check, see docstring
        self._learning: dict[int, bytes] = {}  # stream id -> its block, while h2 decodes it
        self._calls: dict[int, _Call] = {}  # routed requests being received
        self._unsent: dict[int, _Out] = {}  # routed answers waiting for window
        self._last_routed = 0  # highest stream id routed here
        self._out = bytearray()  # frames written here, sent after h2's
        self._unacked = 0  # request bytes received here, not yet given back

    # h2 sees stream ids in order; routed ones are never announced to it.

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pending = bytearray()  # frames for h2, fed in arrival order
        try:
            if self._preface:
                take = min(self._preface, len(buffer))
                pending += buffer[:take]
                del buffer[:take]
                self._preface -= take
            pos, size = 0, len(buffer)
            while size - pos >= 9:
                length = int.from_bytes(buffer[pos : pos + 3], "big")
                end = pos + 9 + length
                if end > size:
                    break
                kind, flags = buffer[pos + 3], buffer[pos + 4]
                stream_id = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                if pending:  # h2's frames first: whatever comes next sees their effect
                    self._feed(pending)
                    pending = bytearray()
                if self._continuation or not self._route(kind, flags, stream_id, buffer, pos, end):
                    pending += buffer[pos:end]
                    if kind in (_HEADERS, _CONTINUATION):
                        self._continuation = not flags & _END_HEADERS
                pos = end
            del buffer[:pos]
            if pending:
                self._feed(pending)
        except ProtocolError:
            log.debug("Protocol error", exc_info=True)
            self.processor.close("Protocol error")
            return
        self._flush()

    def _feed(self, data: bytearray) -> None:
        for event in self.connection.feed(bytes(data)):
            self.processor.process(event)

    def _flush(self) -> None:
        if self._unacked >= _WINDOW_UPDATE_AT:
            self._out += _frame(_WINDOW_UPDATE, 0, 0, self._unacked.to_bytes(4, "big"))
            self._unacked = 0
        data = self.h2c.data_to_send()
        if self._out:
            data += self._out
            self._out = bytearray()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def _route(
        self, kind: int, flags: int, stream_id: int, buffer: bytearray, pos: int, end: int
    ) -> bool:
        """Handle one frame here (True) or leave it to h2 (False)."""
        if kind == _HEADERS:
            call = self._calls.get(stream_id)
            if call is not None:  # trailers of a routed request (gRPC clients send none)
                if flags & _END_STREAM:
                    del self._calls[stream_id]
                    self._answer(stream_id, call)
                return True
            if stream_id <= self._last_routed or stream_id in self.h2c.streams:
                return False  # h2 answers protocol errors; trailers of an h2 stream
            block_start = pos + 9
            if flags & _PADDED or not flags & _END_HEADERS or flags & _END_STREAM:
                self._blocks.clear()
                return False
            if flags & _PRIORITY_FLAG:
                block_start += 5
            block = bytes(buffer[block_start:end])
            target = self._blocks.get(block)
            if target is None or stream_id <= self.h2c.highest_inbound_stream_id:
                # h2 decodes it; a block that may change h2's table (anything but indexed
                # fields) makes every remembered block stale. Learned in learned().
                if not indexed_only(block):
                    self._blocks.clear()
                self._learning[stream_id] = block
                return False
            self._calls[stream_id] = _Call(target)
            self._last_routed = stream_id
            return True
        if not self._ours(stream_id):
            return False
        if kind == _DATA:
            length = end - pos - 9  # flow-controlled length, padding included
            call = self._calls.get(stream_id)
            if call is None:
                self._unacked += length  # DATA after the end of a routed stream: dropped
                return True
            start, stop = pos + 9, end
            if flags & _PADDED and length:
                pad = buffer[start]
                start, stop = start + 1, end - pad
            call.data += buffer[start:stop]
            call.received += length
            if flags & _END_STREAM:
                del self._calls[stream_id]
                self._answer(stream_id, call)
                return True
            problem = _body_problem(call.data, complete=False)
            if problem is not None:  # refused before the rest of it is sent
                del self._calls[stream_id]
                self.stats.routed += 1
                self._unacked += call.received
                self._error(stream_id, *problem, reset=True)
            return True
        if kind == _RST_STREAM:
            call = self._calls.pop(stream_id, None)
            if call is not None:
                self._unacked += call.received
            self._unsent.pop(stream_id, None)
            return True
        if kind == _WINDOW_UPDATE:
            out = self._unsent.get(stream_id)
            if out is not None and end - pos == 13:
                out.window += int.from_bytes(buffer[pos + 9 : end], "big") & 0x7FFFFFFF
                self._send(stream_id, out)
            return True
        return kind != _CONTINUATION  # PRIORITY and unknown types: ignored

    def _ours(self, stream_id: int) -> bool:
        """A frame of a stream routed here (h2 must not see it: to h2 it would be an idle
        stream, a connection error)."""
        if not stream_id & 1 or stream_id in self.h2c.streams:
            return False
        if stream_id in self._calls or stream_id in self._unsent:
            return True
        return self.h2c.highest_inbound_stream_id < stream_id <= self._last_routed

    def learned(self, stream_id: int, target: _Target | None) -> None:
        """h2 decoded the header block of ``stream_id``: remember it if it is a stateless
        check block."""
        block = self._learning.pop(stream_id, None)
        if block is not None and target is not None and indexed_only(block):
            self._blocks[block] = target

    # --- answering routed requests ----------------------------------------------------------

    def _answer(self, stream_id: int, call: _Call) -> None:
        self._unacked += call.received
        self.stats.routed += 1
        answer, status, message = _reply(call.target, bytes(call.data), self.codec)
        if answer is None:
            self._error(stream_id, status, message)
            return
        self._out += _frame(_HEADERS, _END_HEADERS, stream_id, _ANSWER_HEADERS_BLOCK)
        out = _Out(_grpc_frame(answer), self.h2c.remote_settings.initial_window_size)
        self._unsent[stream_id] = out
        self._send(stream_id, out)

    def _error(
        self, stream_id: int, status: Status, message: str | None, *, reset: bool = False
    ) -> None:
        block = _ANSWER_HEADERS_BLOCK + _literal("grpc-status", str(status.value))
        if message is not None:
            block += _literal("grpc-message", encode_grpc_message(message))
        self._out += _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block)
        if reset:  # NO_ERROR: stop sending the request (RFC 9113 8.1)
            self._out += _frame(_RST_STREAM, 0, stream_id, ErrorCodes.NO_ERROR.to_bytes(4, "big"))

    def _send(self, stream_id: int, out: _Out) -> None:
        h2c = self.h2c
        body = out.body
        while body:
            size = min(
                len(body), out.window, h2c.outbound_flow_control_window, h2c.max_outbound_frame_size
            )
            if size <= 0:
                return  # waits for a WINDOW_UPDATE (stream: _route; connection: window_grew)
            self._out += _frame(_DATA, 0, stream_id, bytes(body[:size]))
            del body[:size]
            out.window -= size
            h2c.outbound_flow_control_window -= size  # h2's counter covers both senders
        self._out += _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, _ANSWER_TRAILERS_BLOCK)
        del self._unsent[stream_id]

    def window_grew(self) -> None:
        for stream_id, out in list(self._unsent.items()):
            self._send(stream_id, out)

    def settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        changed = event.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
        if changed is not None and changed.original_value is not None:
            delta = changed.new_value - changed.original_value
            for out in self._unsent.values():
                out.window += delta
        self.window_grew()


class FastCheckServer(Server):
    """grpclib's Server whose connections answer ``fast`` methods synchronously."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        fast: dict[str, FastMethod],
        codec: CodecBase,
        **kwargs: Any,
    ) -> None:
        # A stream's window is one request message: see the module docstring.
        kwargs.setdefault("config", Configuration(http2_stream_window_size=MAX_BODY_BYTES))
        super().__init__(handlers, codec=codec, **kwargs)
        self._fast: dict[str, _Target] = {
            path: (method, self._mapping[path].request_type, self._mapping[path].reply_type)
            for path, method in fast.items()
        }
        self.stats = FastStats()

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = Handler(self._mapping, self._codec, self._status_details_codec, self.__dispatch__)
        self._handlers.add(handler)
        return _FastProtocol(
            handler,
            self._config,
            self._h2_config,
            fast=self._fast,
            codec=self._codec,
            stats=self.stats,
        )
