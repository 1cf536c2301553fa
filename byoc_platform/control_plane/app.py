"""The control plane's HTTP surface (Starlette).

Unauthenticated: ``GET /healthz`` and ``GET /metrics`` (Prometheus; no secrets in it).
Everything else needs header ``X-API-KEY`` equal to ``settings.control_plane.api_key``, else
``401 {"error":{"code":"UNAUTHENTICATED","message":"Invalid or missing API key"}}``.

- ``POST /graphql``: Stigg's GraphQL operations (see graphql.py).
- ``GET  /byoc/v1/environments/{env}/changes?after=0&limit=500``: the change feed, a
  ``catalog.ChangePage`` (limit 1..5000, larger values are capped).
- ``PUT|GET|DELETE /byoc/v1/environments/{env}/{kind}/{id}``: admin upsert / read / delete of
  one catalog entity (kind singular or plural: ``feature`` or ``features``). PUT and DELETE
  answer ``{"change": Change}``; GET answers ``{"data": entity}``.
- ``GET  /byoc/v1/environments/{env}/usage?customerId=&featureId=&resourceId=``:
  ``{"totals": [UsageTotal]}``, the accepted usage per (customer, resource, feature).
- ``GET  /byoc/v1/environments/{env}/usage/records?...``: ``{"records": [UsageRecord]}``.
- ``GET  /byoc/v1/environments/{env}/events?customerId=``: ``{"events": [StoredEvent]}``.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from byoc_platform.control_plane.graphql import Operations
from byoc_platform.control_plane.seed import KINDS, EntityError, check_environment, validate_entity
from byoc_platform.control_plane.store import DEFAULT_PAGE, Store

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/metrics"})
_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    422: "UNPROCESSABLE_ENTITY",
    500: "INTERNAL_ERROR",
}


def json_response(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response(
        {"error": {"code": _CODES.get(status, "ERROR"), "message": message}}, status
    )


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApiKeyAuth:
    """Pure ASGI middleware: the API key guards every path except OPEN_PATHS."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = Headers(scope=scope).get("x-api-key", "").encode()
            if not hmac.compare_digest(given, self._key):
                response = error_response(401, "Invalid or missing API key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _int_param(request: Request, name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"query parameter `{name}` must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ApiError(422, f"query parameter `{name}` must be >= {minimum}, got {value}")
    return value


def _env(request: Request) -> str:
    try:
        return check_environment(request.path_params["env"])
    except EntityError as exc:
        raise ApiError(422, str(exc)) from None


def _kind(request: Request) -> str:
    name = request.path_params["kind"]
    kind = KINDS.get(name)
    if kind is None:
        raise ApiError(404, f"unknown entity kind {name!r}; expected one of {sorted(KINDS)}")
    return kind


class ControlPlaneApi:
    """Route handlers over one store."""

    def __init__(self, store: Store, operations: Operations) -> None:
        self.store = store
        self.operations = operations
        self.registry = CollectorRegistry()
        self.graphql_requests = Counter(
            "byoc_control_plane_graphql_requests",
            "GraphQL requests by operation and outcome",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.catalog_writes = Counter(
            "byoc_control_plane_catalog_writes",
            "Entity upserts/deletes through the admin API",
            ["op"],
            registry=self.registry,
        )

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def graphql(self, request: Request) -> Response:
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            self.graphql_requests.labels("unknown", "error").inc()
            doc = {
                "errors": [
                    {"message": f"body is not JSON: {exc}", "extensions": {"code": "BadUserInput"}}
                ]
            }
            return json_response(doc, 400)
        header_op = request.headers.get("x-graphql-operation-name")
        result = await run_in_threadpool(self.operations.execute, body, header_op)
        name = body.get("operationName") if isinstance(body, dict) else None
        outcome = "error" if "errors" in result else "ok"
        self.graphql_requests.labels(str(name or header_op or "unknown"), outcome).inc()
        if outcome == "error":
            log.info("graphql error", extra={"fields": {"operation": name, **result["errors"][0]}})
        return json_response(result)

    async def changes(self, request: Request) -> Response:
        env = _env(request)
        after = _int_param(request, "after", 0, 0)
        limit = _int_param(request, "limit", DEFAULT_PAGE, 1)
        page = await run_in_threadpool(self.store.changes, env, after, limit)
        return json_response(page)

    async def put_entity(self, request: Request) -> Response:
        env, kind, entity_id = _env(request), _kind(request), request.path_params["id"]
        try:
            data = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from None
        if isinstance(data, dict):
            data.setdefault("id", entity_id)
            if data["id"] != entity_id:
                raise ApiError(
                    422,
                    f"id {data['id']!r} in the body differs from {entity_id!r} in the path"
                    " - at `$.id`",
                )
        try:
            entity = validate_entity(kind, data, kind)
        except EntityError as exc:
            raise ApiError(422, str(exc)) from None
        change = await run_in_threadpool(self.store.upsert, env, entity)
        self.catalog_writes.labels("upsert").inc()
        log.info(
            "entity upserted",
            extra={
                "fields": {"environment": env, "kind": kind, "id": entity_id, "seq": change.seq}
            },
        )
        return json_response({"change": change})

    async def get_entity(self, request: Request) -> Response:
        env, kind, entity_id = _env(request), _kind(request), request.path_params["id"]
        entity = await run_in_threadpool(self.store.get_entity, env, kind, entity_id)
        if entity is None:
            raise ApiError(404, f"{kind} {entity_id!r} not found in environment {env!r}")
        return json_response({"data": entity})

    async def delete_entity(self, request: Request) -> Response:
        env, kind, entity_id = _env(request), _kind(request), request.path_params["id"]
        change = await run_in_threadpool(self.store.delete, env, kind, entity_id)
        if change is None:
            raise ApiError(404, f"{kind} {entity_id!r} not found in environment {env!r}")
        self.catalog_writes.labels("delete").inc()
        log.info(
            "entity deleted",
            extra={
                "fields": {"environment": env, "kind": kind, "id": entity_id, "seq": change.seq}
            },
        )
        return json_response({"change": change})

    def _usage_filters(self, request: Request) -> dict[str, str | None]:
        q = request.query_params
        return {
            "customer_id": q.get("customerId") or None,
            "feature_id": q.get("featureId") or None,
            "resource_id": q.get("resourceId") or None,
        }

    async def usage_totals(self, request: Request) -> Response:
        env, filters = _env(request), self._usage_filters(request)
        totals = await run_in_threadpool(lambda: self.store.usage_totals(env, **filters))
        return json_response({"totals": totals})

    async def usage_records(self, request: Request) -> Response:
        env, filters = _env(request), self._usage_filters(request)
        records = await run_in_threadpool(lambda: self.store.usage_records(env, **filters))
        return json_response({"records": records})

    async def events(self, request: Request) -> Response:
        env, customer = _env(request), request.query_params.get("customerId") or None
        events = await run_in_threadpool(lambda: self.store.events(env, customer_id=customer))
        return json_response({"events": events})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal error")


def create_app(
    store: Store, *, api_key: str, default_environment: str, require_catalog: bool = True
) -> Starlette:
    api = ControlPlaneApi(
        store, Operations(store, default_environment, require_catalog=require_catalog)
    )
    env = "/byoc/v1/environments/{env}"
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/graphql", api.graphql, methods=["POST"]),
        Route(f"{env}/changes", api.changes, methods=["GET"]),
        Route(f"{env}/usage", api.usage_totals, methods=["GET"]),
        Route(f"{env}/usage/records", api.usage_records, methods=["GET"]),
        Route(f"{env}/events", api.events, methods=["GET"]),
        Route(f"{env}/{{kind}}/{{id}}", api.put_entity, methods=["PUT"]),
        Route(f"{env}/{{kind}}/{{id}}", api.get_entity, methods=["GET"]),
        Route(f"{env}/{{kind}}/{{id}}", api.delete_entity, methods=["DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.add_middleware(ApiKeyAuth, api_key=api_key)
    return app
