"""Slow clients against a real uvicorn server on loopback, with the runtime's header deadline,
body timeout and draining shutdown (byoc_platform/request_timeouts.py).

The app reads the whole body like the routes do and answers 400 when it sees a disconnect (as
the ingestion routes do), so a test can tell the middleware's answer from the route's. Waits
are generous bounds; what is asserted is what the server answers and that it closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from byoc_platform.request_timeouts import (
    BodyReads,
    BodyTimeoutMiddleware,
    DrainingServer,
    header_timeout_protocol,
)
from tests.stack_fixtures import free_port

TIMEOUT_S = 1.0
WAIT_S = 30.0  # generous: only a bound, the assertions are on what happens


@dataclass
class Served:
    port: int
    server: DrainingServer
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    release: asyncio.Event  # set (from the server's loop) to let /hold requests answer

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(body_timeout_s: float = TIMEOUT_S) -> Served:
    """A server thread: the runtime's header deadline, body timeout and draining shutdown."""
    started: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/read-later":  # a route that reads the body only once released
            await started[0][1].wait()
        if scope["path"] == "/starlette":  # a route that lets ClientDisconnect propagate
            body = await Request(scope, receive).body()
            await _answer(send, 200, body)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                await _answer(send, 400, b"disconnected")
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["path"] == "/hold":  # a slow route: answers once the test releases it
            await started[0][1].wait()
        await _answer(send, 200, body)

    reads = BodyReads()
    config = uvicorn.Config(
        BodyTimeoutMiddleware(reading_app, timeout_s=body_timeout_s, reads=reads),
        host="127.0.0.1",
        port=free_port(),
        http=header_timeout_protocol(TIMEOUT_S),
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=60,
    )
    server = DrainingServer(config, reads)

    async def main() -> None:
        started.append((asyncio.get_running_loop(), asyncio.Event()))
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    for _ in range(3000):
        if server.started:
            break
        assert thread.is_alive()
        threading.Event().wait(0.01)
    assert server.started
    loop, release = started[0]
    return Served(config.port, server, thread, loop, release)


@pytest.fixture
def served() -> Iterator[Served]:
    served = serve()
    yield served
    served.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One response with a content-length, on a connection that stays open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_stalled_body_gets_408_naming_the_timeout_and_is_closed(served: Served) -> None:
    with connect(served.port) as sock:
        sock.sendall(b'POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"a":')
        raw = read_until_closed(sock)  # returns only because the server closed
    status, body = status_and_body(raw)
    assert status == 408, raw
    assert b"connection: close" in raw.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "REQUEST_TIMEOUT"
    assert "api.body_timeout_s" in error["message"]


def test_a_route_that_does_not_expect_the_disconnect_logs_no_error(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with connect(served.port) as sock:
        sock.sendall(b"POST /starlette HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        status, _ = status_and_body(read_until_closed(sock))
    assert status == 408
    assert any("not received within" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_complete_body_is_answered_by_the_route(served: Served) -> None:
    with connect(served.port) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        raw = read_response(sock)
    assert status_and_body(raw) == (200, b"hello")


def test_a_body_in_chunks_within_the_deadline_is_fine(served: Served) -> None:
    with connect(served.port) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        threading.Event().wait(TIMEOUT_S / 4)
        sock.sendall(b"world")
        raw = read_response(sock)
    assert status_and_body(raw) == (200, b"helloworld")


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    with connect(served.port) as sock:
        assert read_until_closed(sock) == b""  # closed silently, as an idle keep-alive


def test_partial_headers_get_408_and_are_closed(served: Served) -> None:
    with connect(served.port) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Le")
        raw = read_until_closed(sock)
    status, body = status_and_body(raw)
    assert status == 408
    assert "api.header_timeout_s" in json.loads(body)["error"]["message"]


def test_headers_trickled_byte_by_byte_are_still_bounded(served: Served) -> None:
    request = b"POST /x HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"a" * 1000
    with connect(served.port) as sock:
        for byte in request:  # never idle, never done: only a deadline for the whole ends it
            sock.sendall(bytes([byte]))
            readable, _, _ = select.select([sock], [], [], TIMEOUT_S / 10)
            if readable:
                break
        else:
            pytest.fail("1000 bytes trickled over 100 deadlines and the server never answered")
        status, body = status_and_body(read_until_closed(sock))
    assert status == 408 and b"api.header_timeout_s" in body


def test_the_next_request_on_a_kept_alive_connection_is_bounded_too(served: Served) -> None:
    with connect(served.port) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
        assert status_and_body(read_response(sock)) == (200, b"ok")
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        status, body = status_and_body(read_until_closed(sock))
    assert status == 408 and b"api.body_timeout_s" in body


def test_shutdown_answers_stalled_bodies_503_and_finishes_complete_requests() -> None:
    served = serve(body_timeout_s=3600.0)  # only the drain can end the stalled body
    try:
        held = connect(served.port)  # complete body; the route is still working
        held.sendall(b"POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\ndone")
        unread = connect(served.port)  # complete body, not read yet when the shutdown starts
        unread.sendall(b"POST /read-later HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nlate")
        stalled = connect(served.port)
        stalled.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        idle = connect(served.port)
        threading.Event().wait(TIMEOUT_S / 4)  # both requests are in the app
        served.server.should_exit = True
        status, body = status_and_body(read_until_closed(stalled))
        assert status == 503, body
        assert "shutting down" in json.loads(body)["error"]["message"]
        assert read_until_closed(idle) == b""
        assert served.thread.is_alive(), "the complete request is still being answered"
        served.loop.call_soon_threadsafe(served.release.set)
        assert status_and_body(read_response(held)) == (200, b"done")
        assert status_and_body(read_response(unread)) == (200, b"late")
        served.thread.join(WAIT_S)
        assert not served.thread.is_alive(), "the server exited"
        for sock in (held, unread, stalled, idle):
            sock.close()
    finally:
        served.stop()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["bad_content_length", "unknown_method", "http2_preface", "tls_hello"],
)
def test_bytes_that_are_not_http_get_a_json_400_and_are_closed(served: Served, raw: bytes) -> None:
    """uvicorn answers these itself in text/plain; the API's clients parse a JSON error."""
    with connect(served.port) as sock:
        sock.sendall(raw)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert b"x-should-retry: false" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "BAD_REQUEST"
    assert "not valid HTTP/1.1" in error["message"]
