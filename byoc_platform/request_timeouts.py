"""Bounded time for slow clients of the runtime API: headers, body, and graceful shutdown.

uvicorn bounds neither a request's headers (its keep-alive timer only runs between requests,
and not before the first one) nor its body, so a client that connects and stalls holds a
connection, a task, and graceful shutdown, indefinitely (finding F5 in docs/reliability.md).

- Headers: :func:`header_timeout_protocol` wraps uvicorn's HTTP protocol (httptools, or h11
  without it): a connection must deliver a request's headers within ``api.header_timeout_s``
  of connecting or of its previous answer; otherwise it is closed (with a 408 if part of a
  request had arrived). An ASGI middleware cannot do this: it only runs once headers are in.
- Body: :class:`BodyTimeoutMiddleware` gives a route ``api.body_timeout_s`` to receive the
  whole body from its first read; then the client gets 408 in the platform's error format and
  the connection is closed, and the route sees a disconnect (as if the client had gone).
- Shutdown: :class:`BodyReads` knows the body reads in progress; ``drain()`` (called when the
  server starts its graceful shutdown) ends them at once with 503 (retryable: nothing of them
  is stored), so a stalled client cannot hold the exit. Requests whose body is complete are
  not touched: they finish and are answered as usual (acknowledged data is never dropped).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from byoc_platform.api_errors import ERROR_CODES, error_response

log = logging.getLogger(__name__)

_DISCONNECT: Message = {"type": "http.disconnect"}


class BodyReads:
    """The body reads waiting for the client, shared by the middleware and the server."""

    def __init__(self) -> None:
        self.draining = False
        self._waiting: set[asyncio.Timeout] = set()

    def drain(self) -> None:
        """Server shutdown: end every waiting body read now (they answer 503) and all later."""
        self.draining = True
        now = asyncio.get_running_loop().time()
        for timeout in list(self._waiting):
            timeout.reschedule(now)

    async def receive(self, receive: Receive, deadline: float) -> Message:
        """``receive()``, raising TimeoutError at ``deadline`` (loop time) or on drain."""
        async with asyncio.timeout_at(deadline) as timeout:
            self._waiting.add(timeout)
            try:
                return await receive()
            finally:
                self._waiting.discard(timeout)


class BodyTimeoutMiddleware:
    """408 (or 503 while draining) when a request body is not in within ``timeout_s``."""

    def __init__(self, app: ASGIApp, timeout_s: float, reads: BodyReads) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.reads = reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_complete = False
        started = answered = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_complete, answered
            if answered:
                return _DISCONNECT
            if body_complete:
                return await receive()  # e.g. waiting for a disconnect: not a body read
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            # While draining, take what the client has sent (a complete body is in uvicorn's
            # buffer and returns without waiting) but wait for nothing more.
            wait_until = loop.time() if self.reads.draining else deadline
            try:
                message = await self.reads.receive(receive, wait_until)
            except TimeoutError:
                if not started:
                    answered = True
                    await self._answer(scope, send)
                return _DISCONNECT
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # we answered for the route; its own answer to the "disconnect" is moot
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except ClientDisconnect:
            # The disconnect we handed the route (Request.body() raises it): already answered.
            if not answered:
                raise

    async def _answer(self, scope: Scope, send: Send) -> None:
        path = scope.get("path", "")
        if self.reads.draining:
            log.info("server shutting down: request body of %s not complete, answered 503", path)
            response = error_response(
                503,
                "The server is shutting down and the request body was not complete; retry",
                retry_after_s=1,
                headers={"connection": "close"},
            )
        else:
            log.info("request body of %s not received within %gs: 408", path, self.timeout_s)
            response = error_response(
                408,
                f"Request body not received within {self.timeout_s:g}s (api.body_timeout_s)",
                headers={"connection": "close"},
            )
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return _DISCONNECT


def raw_error_response(status: int, reason: str, message: str, *, retry: bool) -> bytes:
    """An error in the API's JSON format (api_errors.py), as raw bytes for the protocol layer
    (no route, no ASGI cycle), closing the connection."""
    body = msgspec.json.encode({"error": {"code": ERROR_CODES[status], "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-should-retry: {'true' if retry else 'false'}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def header_timeout_response(timeout_s: float) -> bytes:
    """The raw 408 written when a started request's headers do not arrive in time."""
    message = f"Request headers not received within {timeout_s:g}s (api.header_timeout_s)"
    return raw_error_response(408, "Request Timeout", message, retry=True)


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class ("auto") with a deadline for every request's headers.

    The deadline is armed when the connection is made and when bytes arrive while no request
    is in progress (``cycle`` is uvicorn's current request: None before the first one). When it
    fires and no new request has started, the connection is closed; a request that started in
    the meantime gets a new deadline once it is answered, so a request's headers get at most
    two deadlines. Bodies are the middleware's business (an active request is left alone).
    """
    response = header_timeout_response(timeout_s)

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None
        _armed_cycle: Any = None
        _partial = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm_header_timer()
            self._partial = True
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            # Bytes that are not HTTP/1.1 (a bad Content-Length, an unknown method, an HTTP/2
            # preface): uvicorn answers text/plain; clients of this API parse the JSON body.
            transport = self.transport
            message = f"{msg.rstrip('.')}: the request is not valid HTTP/1.1"
            transport.write(raw_error_response(400, "Bad Request", message, retry=False))
            transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._armed_cycle = self.cycle
            self._partial = False
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(timeout_s, self._on_header_deadline)

        def _on_header_deadline(self) -> None:
            self._header_timer = None
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if self.cycle is not self._armed_cycle or not self._between_requests():
                # A request arrived in time; bound whatever comes next the same way.
                if self._between_requests():
                    self._arm_header_timer()
                return
            if self._partial:
                log.info("request headers not received within %gs: 408, closed", timeout_s)
                transport.write(response)
            transport.close()

    return HeaderTimeoutProtocol


class DrainingServer(uvicorn.Server):
    """uvicorn's server; when it starts shutting down it drains the waiting body reads."""

    def __init__(self, config: uvicorn.Config, body_reads: BodyReads) -> None:
        super().__init__(config)
        self.body_reads = body_reads

    async def shutdown(self, sockets: Any = None) -> None:
        self.body_reads.drain()
        await super().shutdown(sockets)
