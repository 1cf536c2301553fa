"""The runtime API shell: public health/metrics/openapi, auth on everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient

from byoc_platform.api_errors import ApiError
from byoc_platform.runtime_server import build_app, create_context, openapi_document
from tests.stack_fixtures import test_settings


class EchoComponent:
    """A minimal component: one authenticated route, controllable readiness."""

    name = "echo"

    def __init__(self) -> None:
        self.is_ready = True
        self.started = self.stopped = False

    def routes(self) -> list[BaseRoute]:
        async def echo(request: Request) -> JSONResponse:
            if request.query_params.get("fail"):
                raise ApiError(422, "field `x` is required")
            if request.query_params.get("crash"):
                raise RuntimeError("boom")
            return JSONResponse({"environment": request.state.environment})

        return [Route("/api/v1/echo", echo)]

    def openapi_paths(self) -> dict[str, Any]:
        return {"/api/v1/echo": {"get": {"responses": {"200": {"description": "OK"}}}}}

    async def startup(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    def ready(self) -> tuple[bool, str]:
        return self.is_ready, "ok" if self.is_ready else "broker unreachable"


def _client(tmp_path: Path) -> tuple[TestClient, EchoComponent, str]:
    context = create_context(test_settings(tmp_path))
    key = context.keys.create("env-a")
    component = EchoComponent()
    return (
        TestClient(build_app(context, [component]), raise_server_exceptions=False),
        component,
        key,
    )


def test_public_routes_need_no_key(tmp_path: Path) -> None:
    client, _, _ = _client(tmp_path)
    with client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert "byoc_http_requests_total" in client.get("/metrics").text
        document = client.get("/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        assert {"/healthz", "/api/v1/echo"} <= set(document["paths"])


def test_every_other_route_needs_a_valid_key(tmp_path: Path) -> None:
    client, _, key = _client(tmp_path)
    with client:
        for headers in ({}, {"X-API-KEY": "wrong"}):
            response = client.get("/api/v1/echo", headers=headers)
            assert response.status_code == 401
            assert response.json() == {
                "error": {"code": "UNAUTHENTICATED", "message": "Invalid or missing API key"}
            }
            assert response.headers["x-should-retry"] == "false"
        assert client.get("/api/v1/echo", headers={"X-API-KEY": key}).json() == {
            "environment": "env-a"
        }
        # Unknown routes do not reveal themselves to unauthenticated callers either.
        assert client.get("/api/v1/nothing").status_code == 401
        assert client.get("/api/v1/nothing", headers={"X-API-KEY": key}).status_code == 404


def test_errors_use_the_stigg_error_body(tmp_path: Path) -> None:
    client, _, key = _client(tmp_path)
    with client:
        response = client.get("/api/v1/echo?fail=1", headers={"X-API-KEY": key})
        assert response.status_code == 422
        assert response.json()["error"] == {
            "code": "UNPROCESSABLE_ENTITY",
            "message": "field `x` is required",
        }
        response = client.get("/api/v1/echo?crash=1", headers={"X-API-KEY": key})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "INTERNAL_ERROR"
        assert "boom" not in response.text  # internals are logged, not returned


def test_readiness_reflects_components_and_lifecycle_runs(tmp_path: Path) -> None:
    client, component, _ = _client(tmp_path)
    with client:
        assert component.started
        component.is_ready = False
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["components"]["echo"] == {
            "ready": False,
            "reason": "broker unreachable",
        }
    assert component.stopped


def test_wrong_method_answers_405_with_allow(tmp_path: Path) -> None:
    client, _, key = _client(tmp_path)
    with client:
        response = client.post("/api/v1/echo", headers={"X-API-KEY": key})
        assert response.status_code == 405
        assert "GET" in response.headers["allow"]
        assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_operations_with_a_body_document_the_core_body_read_answers() -> None:
    class BodyComponent(EchoComponent):
        def openapi_paths(self) -> dict[str, Any]:
            return {
                "/api/v1/echo": {"get": {"responses": {"200": {"description": "OK"}}}},
                "/api/v1/post": {
                    "post": {
                        "requestBody": {"content": {"application/json": {"schema": {}}}},
                        "responses": {"503": {"description": "the component's own"}},
                    }
                },
            }

    paths = openapi_document([BodyComponent()])["paths"]
    post = paths["/api/v1/post"]["post"]["responses"]
    assert "api.body_timeout_s" in post["408"]["description"]
    assert post["503"] == {"description": "the component's own"}  # kept, not overwritten
    assert "408" not in paths["/api/v1/echo"]["get"]["responses"]  # no body, no body timeout


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(tmp_path: Path) -> None:
    client, _, key = _client(tmp_path)
    resp = client.get(
        "/api/v1/echo/",
        headers={"X-API-KEY": key, "Host": "attacker.example"},
        follow_redirects=False,
    )
    assert resp.status_code == 404
    assert "location" not in resp.headers
    assert resp.json()["error"]["code"] == "NOT_FOUND"
    assert client.get("/api/v1/echo", headers={"X-API-KEY": key}).status_code == 200
