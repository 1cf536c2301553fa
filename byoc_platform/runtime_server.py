"""The runtime API process: one Starlette app (port 8080) composed of runtime components.

The core serves health, readiness, metrics and the OpenAPI document, and authenticates every
other route; components (ingestion, enforcement) bring their routes through the ``byoc.runtime``
entry points (see plugins.py). No FastAPI: a plain ASGI stack keeps per-request cost small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as prometheus_text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byoc_platform.api_errors import ERROR_BODY_SCHEMA, UNAUTHENTICATED, ApiError, error_response
from byoc_platform.auth import KeyStore
from byoc_platform.lean_http import lean_protocol
from byoc_platform.plugins import RuntimeComponent, RuntimeContext, runtime_factories
from byoc_platform.request_timeouts import (
    BodyReads,
    BodyTimeoutMiddleware,
    DrainingServer,
    header_timeout_protocol,
)
from byoc_platform.settings import Settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
ROLE_COMPONENTS = {"ingest": {"ingest"}, "enforcement": {"enforcement"}}


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def authenticate(keys: KeyStore, scope: Scope) -> bool:
    """Whether an HTTP request may proceed: a public path, or an X-API-KEY whose environment
    is then in ``scope["state"]["environment"]``."""
    if scope["path"] in PUBLIC_PATHS:
        return True
    key = None
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            # Surrounding blanks are not part of a field value (RFC 9110 5.5); parsers
            # strip the leading ones only.
            key = value.decode("latin-1").strip(" \t")
            break
    environment = keys.environment_of(key)
    if environment is None:
        return False
    scope.setdefault("state", {})["environment"] = environment
    return True


class AuthMiddleware:
    """Resolves X-API-KEY to an environment; 401 for anything but the public paths."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or authenticate(self.keys, scope):
            await self.app(scope, receive, send)
            return
        await UNAUTHENTICATED.response()(scope, receive, send)


class HttpMetrics:
    """Requests and their latency by route template ("unmatched" without one) and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "byoc_http_requests_total", "HTTP requests", ["path", "status"], registry=registry
        )
        self.latency = Histogram(
            "byoc_http_request_seconds",
            "HTTP request latency",
            ["path"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

        # The labelled series by (path, status): prometheus_client's labels() cost ~8 us per
        # request (cProfile); the routes and statuses are few.
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, route: Any, status: int, seconds: float) -> None:
        path = getattr(route, "path", "unmatched")
        series = self._series.get((path, status))
        if series is None:
            series = (self.requests.labels(path, str(status)), self.latency.labels(path))
            self._series[(path, status)] = series
        series[0].inc()
        series[1].observe(seconds)


class MetricsMiddleware:
    """Counts every request the ASGI stack answers (see HttpMetrics)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(scope.get("route"), status[0], time.perf_counter() - started)


def error_answer(request: Request, exc: Exception) -> Response:
    """The answer to an exception a route raised (the ASGI stack and the lean path alike)."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, HTTPException):
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. `Allow` on 405
        return response
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal error")


async def _on_error(request: Request, exc: Exception) -> Response:
    return error_answer(request, exc)


class LeanRoutes:
    """What the lean HTTP path (lean_http.py) may answer, and its answers.

    A request it takes gets exactly what the ASGI stack would give it: the same routing (the
    first route that matches fully, in order), authentication, route function, error answers
    and metrics. It takes only requests whose route is a plain async ``Route`` function
    (Starlette's ``request_response``, no route middleware or body limit) and not HEAD; every
    other request (404, 405, HEAD, ...) is left to the ASGI stack."""

    def __init__(self, app: Starlette, keys: KeyStore, metrics: HttpMetrics) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics
        self.routes = [
            (r, r.path_regex.match, _lean(r)) for r in app.routes if isinstance(r, Route)
        ]
        self.complete = len(self.routes) == len(app.routes)

    def match(self, scope: Scope) -> tuple[Route, dict[str, Any]] | None:
        """The route a request goes to, if the lean path serves it."""
        if scope["method"] == "HEAD" or scope["root_path"] or not self.complete:
            return None
        path = scope["path"]
        for route, quick, lean in self.routes:
            if quick(path) is None:
                continue
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return (route, child_scope) if lean else None
        return None

    async def answer(self, scope: Scope, route: Route, child_scope: Scope, body: bytes) -> Response:
        """The route's response to a request whose ``body`` is complete (never raises)."""
        started = time.perf_counter()
        matched: Route | None = None
        response: Response | None = None
        request = Request(scope, _body_receiver(body))
        # The body is in hand: what Request.body() would read and cache (its receive loop is
        # ~10 us per request); a Request without it still reads it from receive.
        request._body = body
        try:
            if not authenticate(self.keys, scope):
                response = UNAUTHENTICATED.response()
                return response
            scope["app"] = self.app
            scope["router"] = self.app.router
            scope["route"] = matched = route
            scope.update(child_scope)
            response = await route.endpoint(request)
            return response
        except Exception as exc:  # as the ASGI stack's exception and error layers answer
            response = error_answer(request, exc)
            return response
        finally:
            status = 500 if response is None else response.status_code
            self.metrics.observe(matched, status, time.perf_counter() - started)


def _lean(route: Route) -> bool:
    """Whether the route is a plain async function behind Starlette's request_response."""
    return getattr(
        route.app, "__qualname__", ""
    ) == "request_response.<locals>.app" and asyncio.iscoroutinefunction(route.endpoint)


def _body_receiver(body: bytes) -> Receive:
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop() if messages else {"type": "http.disconnect"}

    return receive


def _base_openapi() -> dict[str, Any]:
    ok = {"200": {"description": "OK"}}
    return {
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": ok}},
        "/readyz": {
            "get": {
                "summary": "Readiness of the component dependencies",
                "security": [],
                "responses": {**ok, "503": {"description": "Not ready"}},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": ok}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": ok}},
    }


# What the core itself may answer to any request with a body (request_timeouts.py).
_BODY_READ_ANSWERS = {
    "408": {
        "description": "The request body was not received within api.body_timeout_s",
        "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}},
    },
    "503": {
        "description": "The server is shutting down and the request body was not complete; retry",
        "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}},
    },
}


def openapi_document(components: Iterable[RuntimeComponent]) -> dict[str, Any]:
    paths = _base_openapi()
    for component in components:
        paths.update(component.openapi_paths())
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                responses = operation.setdefault("responses", {})
                for status, answer in _BODY_READ_ANSWERS.items():
                    responses.setdefault(status, answer)
    return {
        "openapi": "3.1.0",
        "info": {"title": "byoc-platform runtime API", "version": "1"},
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}}
        },
        "security": [{"apiKey": []}],
        "paths": paths,
    }


def load_components(context: RuntimeContext, role: str = "all") -> list[RuntimeComponent]:
    factories = runtime_factories()
    wanted = ROLE_COMPONENTS.get(role, set(factories))
    unknown = wanted - set(factories)
    if unknown:
        raise RuntimeError(
            f"role {role!r} needs runtime components {sorted(unknown)} that are not installed"
        )
    return [factories[name](context) for name in sorted(wanted)]


def build_app(
    context: RuntimeContext,
    components: list[RuntimeComponent],
    body_reads: BodyReads | None = None,
) -> Starlette:
    """The runtime ASGI app for these components.

    ``body_reads`` is shared with the server, which drains it when it starts shutting down."""
    document = openapi_document(components)

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = {c.name: c.ready() for c in components}
        ready = all(ok for ok, _ in checks.values())
        body = {
            "status": "ready" if ready else "not ready",
            "components": {
                name: {"ready": ok, "reason": why} for name, (ok, why) in checks.items()
            },
        }
        return _json(body, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(prometheus_text(context.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return _json(document)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started: list[RuntimeComponent] = []
        try:
            for component in components:
                await component.startup()
                started.append(component)
                log.info("component %s started", component.name)
            yield
        finally:
            for component in reversed(started):
                try:
                    await component.shutdown()
                    log.info("component %s stopped", component.name)
                except Exception:
                    log.exception("component %s failed to stop cleanly", component.name)

    routes: list[Any] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
    ]
    for component in components:
        routes.extend(component.routes())
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _on_error, HTTPException: _on_error, 500: _on_error},
    )
    # No trailing-slash redirects: Starlette builds their Location from the request's Host
    # header (anyone's choice); a path this API does not have is a 404 in its error format.
    app.router.redirect_slashes = False
    # Last added runs first: metrics see every answer, the body timeout's 408 included.
    app.add_middleware(AuthMiddleware, keys=context.keys)
    app.add_middleware(
        BodyTimeoutMiddleware,
        timeout_s=context.settings.api.body_timeout_s,
        reads=body_reads or BodyReads(),
    )
    app.state.http_metrics = HttpMetrics(context.registry)
    app.add_middleware(MetricsMiddleware, metrics=app.state.http_metrics)
    return app


def create_context(settings: Settings) -> RuntimeContext:
    assert settings.api_keys_file is not None
    return RuntimeContext(
        settings=settings, registry=CollectorRegistry(), keys=KeyStore(settings.api_keys_file)
    )


def serve(settings: Settings, role: str = "all") -> None:
    """Run the runtime API until SIGINT/SIGTERM (graceful: stop accepting, flush, exit)."""
    import uvicorn

    context = create_context(settings)
    components = load_components(context, role)
    body_reads = BodyReads()
    app = build_app(context, components, body_reads)
    tls = {}
    if settings.api.tls_cert_file and settings.api.tls_key_file:
        tls = {
            "ssl_certfile": str(settings.api.tls_cert_file),
            "ssl_keyfile": str(settings.api.tls_key_file),
        }
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "runtime API binds %s, not loopback: it is reachable from the network", settings.host
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.ports.api,
        # uvicorn's own protocol, plus a deadline for each request's headers (slow clients)
        # and the lean path for complete requests (lean_http.py).
        http=lean_protocol(
            header_timeout_protocol(settings.api.header_timeout_s),
            LeanRoutes(app, context.keys, app.state.http_metrics),
        ),
        log_config=None,
        access_log=False,
        # Nothing reads the client address, so no X-Forwarded-* rewriting layer per request.
        proxy_headers=False,
        # An upper bound only: stalled bodies end at once when shutdown starts (see
        # DrainingServer), so this waits for requests with complete bodies, which are
        # answered within produce_timeout_s.
        timeout_graceful_shutdown=30,
        backlog=2048,
        **tls,
    )
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(DrainingServer(config, body_reads).serve())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (uvicorn[standard] brings it): its event loop costs less
    CPU per request than asyncio's (docs/benchmarks-enforcement.md); None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
