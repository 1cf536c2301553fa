"""Complete requests answered without the ASGI layers: the runtime's hot routes' HTTP path.

Why: under uvicorn, a request to a runtime route passes through a task, the ASGI scope and
message dicts, six middleware layers each wrapping ``send`` (Starlette's error and exception
layers, metrics, the body deadline, auth, routing) and two socket writes per answer. Measured
on this machine, that cost ~150 us of CPU per credit consumption, most of the runtime's share
(docs/benchmarks-enforcement.md). Here, a request whose headers *and* whole body arrived in
one read is answered from the parsed request: the same route function, auth, error answers
and metrics (``runtime_server.LeanRoutes``), one task, and one write of status line, headers
and body.

What still goes the ASGI way, unchanged: a body that is not complete in the read that
completed its headers (so body deadlines and shutdown draining stay request_timeouts.py's
business), pipelined requests, HEAD, and whatever ``LeanRoutes.match`` declines (404, 405,
routes with their own middleware). A lean request is uvicorn's own request cycle, so graceful
shutdown, keep-alive, ``Connection: close`` and pipelining behave as for any request: the
server waits for its task, a later pipelined request waits for its answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

log = logging.getLogger(__name__)


class Routes(Protocol):
    def match(self, scope: Scope) -> tuple[Any, Scope] | None: ...

    async def answer(
        self, scope: Scope, route: Any, child_scope: Scope, body: bytes
    ) -> Response: ...


def lean_protocol(base: type[asyncio.Protocol], routes: Routes) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools protocol or a subclass) with the lean path for ``routes``;
    ``base`` itself when it is not httptools' (h11 has none of these hooks)."""
    if not issubclass(base, HttpToolsProtocol):
        return base

    class LeanProtocol(base):  # type: ignore[valid-type,misc]
        # A lean candidate whose body is still arriving: (cycle, app, route, child_scope).
        _held: tuple[RequestResponseCycle, Any, Any, Scope] | None = None
        _in_headers = False

        def on_headers_complete(self) -> None:
            self._in_headers = True
            try:
                super().on_headers_complete()
            finally:
                self._in_headers = False

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # Only a request starting now, as its headers complete (not a pipelined one
            # started after an answer), and only the app (not uvicorn's 503 for overload).
            if self._in_headers and app is self.app:
                found = routes.match(cycle.scope)
                if found is not None:
                    self._held = (cycle, app, *found)
                    return
            super()._start_asgi_task(cycle, app)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            held = self._held
            if held is not None and held[0] is self.cycle and not self.cycle.more_body:
                self._held = None
                cycle, _, route, child_scope = held
                task = self.loop.create_task(self._answer(cycle, route, child_scope))
                task.add_done_callback(self.tasks.discard)
                self.tasks.add(task)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            held = self._held
            if held is not None:  # the body is still coming: the ASGI stack takes it
                self._held = None
                if not self.transport.is_closing():
                    super()._start_asgi_task(held[0], held[1])

        async def _answer(self, cycle: RequestResponseCycle, route: Any, child: Scope) -> None:
            response = await routes.answer(cycle.scope, route, child, bytes(cycle.body))
            try:
                if type(response).__call__ is Response.__call__:
                    await self._write(cycle, response)
                else:  # e.g. a streaming response: the ASGI way
                    await response(cycle.scope, cycle.receive, cycle.send)
            except Exception:
                log.exception("answering %s %s failed", cycle.scope["method"], cycle.scope["path"])
                self.transport.close()

        async def _write(self, cycle: RequestResponseCycle, response: Response) -> None:
            if cycle.flow.write_paused and not cycle.disconnected:
                await cycle.flow.drain()
            if cycle.disconnected:
                return
            cycle.response_started = True
            content = [STATUS_LINE[response.status_code]]
            for name, value in cycle.default_headers:
                content.extend((name, b": ", value, b"\r\n"))
            for name, value in response.raw_headers:
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                if name == b"connection" and b"close" in value.lower():
                    cycle.keep_alive = False
                content.extend((name, b": ", value, b"\r\n"))
            if not cycle.keep_alive:
                content.append(b"connection: close\r\n")
            content.extend((b"\r\n", response.body))
            self.transport.write(b"".join(content))
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()
            if response.background is not None:
                await response.background()

    return LeanProtocol
