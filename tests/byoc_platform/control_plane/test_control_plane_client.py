from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from byoc_platform.catalog import Feature
from byoc_platform.control_plane.client import (
    AsyncControlPlaneClient,
    ControlPlaneClient,
    ControlPlaneRequestError,
    ControlPlaneUnavailable,
    base_url_from_settings,
)
from byoc_platform.settings import Settings
from tests.byoc_platform.control_plane.cp_harness import API_KEY, ControlPlaneProcess, free_port


def test_base_url_comes_from_the_graphql_api_url() -> None:
    settings = Settings(ports={"control_plane": 18123})
    assert base_url_from_settings(settings) == "http://127.0.0.1:18123"


def test_connection_refused_is_unavailable() -> None:
    with (
        ControlPlaneClient(f"http://127.0.0.1:{free_port()}", API_KEY, timeout=2) as c,
        pytest.raises(ControlPlaneUnavailable, match="unreachable"),
    ):
        c.changes("development")
    assert not ControlPlaneClient(f"http://127.0.0.1:{free_port()}", API_KEY).healthy()


class _Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error":{"code":"UNAVAILABLE","message":"down"}}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    """A real HTTP server that answers 503 to everything."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_5xx_is_unavailable(failing_server: str) -> None:
    with (
        ControlPlaneClient(failing_server, API_KEY) as c,
        pytest.raises(ControlPlaneUnavailable, match="503"),
    ):
        c.changes("development")


def test_unknown_kind_raises_instead_of_reading_as_missing(client: ControlPlaneClient) -> None:
    with pytest.raises(ControlPlaneRequestError) as info:
        client.get_entity("development", "widget", "w")
    assert info.value.status == 404
    assert client.get_entity("development", "feature", "no-such-feature") is None


def test_async_client_reads_and_writes(shared_cp: ControlPlaneProcess) -> None:
    async def run() -> None:
        async with AsyncControlPlaneClient(shared_cp.url, API_KEY) as c:
            assert await c.healthy()
            change = await c.put_entity("async-client", Feature(id="feature-async"))
            page = await c.changes("async-client", after=0)
            assert page.changes == [change]
            assert await c.get_entity("async-client", "feature", "feature-async") == Feature(
                id="feature-async"
            )
            deleted = await c.delete_entity("async-client", "feature", "feature-async")
            assert deleted is not None and deleted.seq == change.seq + 1
            assert await c.delete_entity("async-client", "feature", "feature-async") is None
            assert await c.usage_totals("async-client") == []

    asyncio.run(run())
