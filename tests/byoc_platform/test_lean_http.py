"""The lean HTTP path (byoc_platform/lean_http.py) against a real uvicorn server on loopback,
serving the runtime app as `byoc serve` does: a request complete in one read is answered by
it, with byte-for-byte the answer the ASGI stack gives the same request when its body arrives
later (and so goes the ASGI way); routing, auth, errors, metrics, keep-alive, pipelining and
graceful shutdown hold on both paths.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from byoc_platform.api_errors import ApiError
from byoc_platform.lean_http import lean_protocol
from byoc_platform.request_timeouts import BodyReads, DrainingServer, header_timeout_protocol
from byoc_platform.runtime_server import LeanRoutes, build_app, create_context
from tests.byoc_platform.test_request_timeouts import WAIT_S, connect
from tests.stack_fixtures import free_port, test_settings


class TaggingMiddleware:
    """A route middleware: its route must be served by the ASGI stack, which runs it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-tagged", b"yes")]
            await send(message)

        await self.app(scope, receive, tagged)


class Component:
    name = "lean"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def routes(self) -> list[BaseRoute]:
        async def echo(request: Request) -> Response:
            body = await request.body()
            if request.query_params.get("fail"):
                raise ApiError(422, "field `x` is required")
            if request.query_params.get("crash"):
                raise RuntimeError("boom")
            return JSONResponse(
                {
                    "environment": request.state.environment,
                    "id": request.path_params["item"],
                    "body": body.decode(),
                    "query": request.query_params.get("q"),
                }
            )

        async def hold(request: Request) -> Response:
            await self.release.wait()
            return Response(await request.body())

        async def tagged(request: Request) -> Response:
            return Response(b"tagged")

        return [
            Route("/api/v1/items/{item}", echo, methods=["GET", "POST"]),
            Route("/api/v1/hold", hold, methods=["POST"]),
            Route("/api/v1/tagged", tagged, middleware=[Middleware(TaggingMiddleware)]),
        ]

    def openapi_paths(self) -> dict[str, Any]:
        return {}

    async def startup(self) -> None:
        self.release = asyncio.Event()

    async def shutdown(self) -> None:
        pass

    def ready(self) -> tuple[bool, str]:
        return True, "ok"


class CountingRoutes(LeanRoutes):
    """The runtime's LeanRoutes, counting what it answered (which path a request took)."""

    answered = 0

    async def answer(self, *args: Any) -> Response:
        self.answered += 1
        return await super().answer(*args)


@dataclass
class Served:
    port: int
    key: str
    server: DrainingServer
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    component: Component
    routes: CountingRoutes

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    context = create_context(test_settings(tmp_path))
    key = context.keys.create("env-a")
    component = Component()
    reads = BodyReads()
    app = build_app(context, [component], reads)
    routes = CountingRoutes(app, context.keys, app.state.http_metrics)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        http=lean_protocol(header_timeout_protocol(10.0), routes),
        log_config=None,
        timeout_graceful_shutdown=60,
    )
    server = DrainingServer(config, reads)
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    served = Served(config.port, key, server, thread, loops[0], component, routes)
    yield served
    served.stop()


def read_response(sock: socket.socket, buffered: bytearray | None = None) -> bytes:
    """One response (with a content-length) from a connection that may stay open."""
    received = buffered if buffered is not None else bytearray()
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {bytes(received)!r}"
        received += chunk
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += sock.recv(65536)
    received[:] = rest[length:]  # what belongs to the next response
    return head + b"\r\n\r\n" + rest[:length]


def request(method: str, path: str, key: str | None, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}"
    if key is not None:
        head += f"X-API-KEY: {key}\r\n"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def comparable(raw: bytes) -> bytes:
    return re.sub(rb"(?im)^date: [^\r]*\r\n", b"", raw)  # the only header allowed to differ


def both_ways(served: Served, raw: bytes) -> tuple[bytes, bytes]:
    """The answer to ``raw`` in one write (lean), and with its last byte 50 ms later (ASGI)."""
    with connect(served.port) as sock:
        sock.sendall(raw)
        lean = read_response(sock)
    with connect(served.port) as sock:
        sock.sendall(raw[:-1])
        time.sleep(0.05)
        sock.sendall(raw[-1:])
        asgi = read_response(sock)
    return comparable(lean), comparable(asgi)


def test_a_complete_request_is_answered_by_the_lean_path_as_the_asgi_stack_would(
    served: Served,
) -> None:
    cases = [
        request("POST", "/api/v1/items/a1?q=x%20y", served.key, b'{"n": 1}'),  # 200
        request("POST", "/api/v1/items/a1?fail=1", served.key, b"{}"),  # ApiError 422
        request("POST", "/api/v1/items/a1?crash=1", served.key, b"{}"),  # unhandled: 500
        request("POST", "/api/v1/items/a1", None, b"{}"),  # no key: 401
        request("POST", "/api/v1/items/a1", "wrong", b"{}"),  # 401
    ]
    statuses = []
    for raw in cases:
        before = served.routes.answered
        lean, asgi = both_ways(served, raw)
        assert served.routes.answered == before + 1, "exactly one of the two went lean"
        assert lean == asgi
        statuses.append(int(lean.split(b" ", 2)[1]))
    assert statuses == [200, 422, 500, 401, 401]
    first = both_ways(served, cases[0])[0]
    assert b'"id":"a1"' in first and b'"query":"x y"' in first and b'"environment":"env-a"' in first
    assert b"boom" not in both_ways(served, cases[2])[0]  # internals are logged, not returned
    # Without a body, a request is complete with its headers: always lean.
    before = served.routes.answered
    with connect(served.port) as sock:
        sock.sendall(request("GET", "/readyz", None))  # public: no key needed
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(request("GET", "/api/v1/items/g?q=1", served.key))
        assert b'"query":"1"' in read_response(sock)
    assert served.routes.answered == before + 2


def test_a_failure_before_the_route_is_a_500_on_both_paths(served: Served, tmp_path: Path) -> None:
    keys = served.routes.keys.path
    good = keys.read_text()
    # The key store cannot read its file (a directory in its place): auth itself raises. (A
    # file that does not parse no longer does: the keys read before stay in force.)
    keys.unlink()
    keys.mkdir()
    try:
        lean, asgi = both_ways(served, request("POST", "/api/v1/items/a1", served.key, b"{}"))
    finally:
        keys.rmdir()
        keys.write_text(good)
    assert lean == asgi
    assert lean.startswith(b"HTTP/1.1 500") and b"INTERNAL_ERROR" in lean


def test_what_the_lean_path_declines_goes_the_asgi_way(served: Served) -> None:
    declined = [
        (request("GET", "/api/v1/nothing", served.key), 404),
        (request("DELETE", "/api/v1/items/a1", served.key), 405),  # a partial match only
        (request("GET", "/api/v1/tagged", served.key), 200),  # a route with middleware
    ]
    for raw, status in declined:
        with connect(served.port) as sock:
            sock.sendall(raw)
            answer = read_response(sock)
        assert int(answer.split(b" ", 2)[1]) == status
    assert served.routes.answered == 0
    assert b"x-tagged: yes" in answer  # the route's middleware ran
    with connect(served.port) as sock:  # HEAD: headers only, by the ASGI stack
        sock.sendall(request("HEAD", "/api/v1/items/a1", served.key))
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert served.routes.answered == 0


def test_keep_alive_pipelining_and_connection_close(served: Served) -> None:
    with connect(served.port) as sock:
        buffered = bytearray()
        for n in range(3):  # one connection, one request after the other
            sock.sendall(request("POST", f"/api/v1/items/k{n}", served.key, b"{}"))
            assert b'"id":"k%d"' % n in read_response(sock, buffered)
        # Pipelined: a slow lean request, then two more in the same write. Answers in order.
        sock.sendall(
            request("POST", "/api/v1/hold", served.key, b'"held"')
            + request("POST", "/api/v1/items/p1", served.key, b"{}")
            + request("GET", "/api/v1/nothing", served.key)
        )
        time.sleep(0.2)
        served.loop.call_soon_threadsafe(served.component.release.set)
        answers = [read_response(sock, buffered) for _ in range(3)]
        assert answers[0].endswith(b'"held"')
        assert b'"id":"p1"' in answers[1]
        assert answers[2].startswith(b"HTTP/1.1 404")
        sock.sendall(request("POST", "/api/v1/items/c", served.key, b"{}", "Connection: close\r\n"))
        last = read_response(sock, buffered)
        assert b"connection: close" in last.lower()
        assert sock.recv(65536) == b""  # and closed
    assert served.routes.answered == 5  # 3 + the held one + the last; p1 came pipelined


def test_metrics_count_lean_answers_by_route(served: Served) -> None:
    for n in range(7):
        with connect(served.port) as sock:
            sock.sendall(request("POST", f"/api/v1/items/m{n}", served.key, b"{}"))
            read_response(sock)
    with connect(served.port) as sock:
        sock.sendall(request("GET", "/metrics", None))
        metrics = read_response(sock).decode()
    assert served.routes.answered == 8
    assert 'byoc_http_requests_total{path="/api/v1/items/{item}",status="200"} 7.0' in metrics
    assert 'byoc_http_request_seconds_count{path="/api/v1/items/{item}"} 7.0' in metrics


def test_shutdown_waits_for_a_lean_request_in_progress(served: Served) -> None:
    sock = connect(served.port)
    sock.sendall(request("POST", "/api/v1/hold", served.key, b'"last"'))
    time.sleep(0.2)  # in the route, waiting
    served.server.should_exit = True
    time.sleep(0.5)
    assert served.thread.is_alive(), "the server waits for the request"
    served.loop.call_soon_threadsafe(served.component.release.set)
    answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'"last"')
    assert b"connection: close" in answer.lower()
    assert sock.recv(65536) == b""
    served.thread.join(WAIT_S)
    assert not served.thread.is_alive()
    sock.close()
