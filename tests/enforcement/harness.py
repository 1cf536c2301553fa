"""Real processes for the enforcement tests: the control-plane stand-in and the runtime app.

The control plane runs as its own process (``python -m byoc_platform.control_plane``) so a test
can stop and restart it; the runtime app (Starlette + the enforcement component, whose gRPC
server shares the event loop) runs under uvicorn in a thread of the test process, on free
loopback ports, exactly as ``byoc serve`` composes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from byoc_platform.control_plane.client import ControlPlaneClient
from byoc_platform.runtime_server import build_app, create_context
from byoc_platform.settings import Settings

SEED = Path(__file__).with_name("seed.yaml")
CP_KEY = "enforcement-tests-control-plane-key"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class ControlPlaneProcess:
    """The local Stigg Cloud stand-in as a subprocess we can stop and restart."""

    def __init__(self, data_dir: Path, seed: Path = SEED) -> None:
        self.data_dir = data_dir
        self.seed = seed
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "control_plane.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BYOC_CONTROL_PLANE__API_KEY"] = CP_KEY
        env["BYOC_DATA_DIR"] = str(self.data_dir)
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "byoc_platform.control_plane",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir / "cp"),
                "--seed",
                str(self.seed),
            ],
            cwd=REPO,
            env=self._env(),
            stdout=log,
            stderr=log,
        )
        client = self.client()
        try:
            wait_until(client.healthy, timeout=30)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def apply_offline(self, file: Path) -> str:
        """``python -m byoc_platform.control_plane apply`` while the server is down."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "byoc_platform.control_plane",
                "apply",
                "--data-dir",
                str(self.data_dir / "cp"),
                str(file),
            ],
            cwd=REPO,
            env=self._env(),
            capture_output=True,
            check=True,
            timeout=60,
        )
        return done.stdout.decode()

    def client(self) -> ControlPlaneClient:
        return ControlPlaneClient(self.url, CP_KEY)


@dataclass
class Runtime:
    settings: Settings
    api_url: str
    grpc_port: int
    api_key: str
    component: Any
    server: uvicorn.Server
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop | None = None

    def key_for(self, environment: str) -> str:
        return self.component.context.keys.create(environment)

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, headers={"X-API-KEY": key or self.api_key}, timeout=30
        )

    def sync_now(self) -> None:
        """Run one sync pass in the runtime's loop and wait for it."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(self.component.sync.sync_all(), self.loop)
        future.result(30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def make_settings(
    data_dir: Path, cp_url: str, infra: Settings | None = None, **enforcement: Any
) -> Settings:
    """Runtime settings on free ports; Kafka and ClickHouse of ``infra`` when given."""
    enf = {"consume_usage": False, "rebuild_from_warehouse": False, **enforcement}
    extra: dict[str, Any] = {}
    if infra is not None:
        extra["kafka"] = infra.kafka.model_dump()
        extra["clickhouse"] = infra.clickhouse.model_dump()
    return Settings(
        data_dir=data_dir,
        environment="development",
        ports={"api": free_port(), "grpc": free_port()},
        control_plane={"api_url": f"{cp_url}/graphql", "api_key": CP_KEY, "sync_interval_s": 0.5},
        enforcement=enf,
        **extra,
    )


def start_runtime(settings: Settings, components: tuple[str, ...] = ("enforcement",)) -> Runtime:
    from byoc_platform.plugins import runtime_factories

    context = create_context(settings)
    key = context.keys.create(settings.environment)
    factories = runtime_factories()
    built = [factories[name](context) for name in components]
    component = built[0]
    app = build_app(context, built)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.ports.api,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    holder: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=run, name="runtime", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=60)
    return Runtime(
        settings=settings,
        api_url=f"http://127.0.0.1:{settings.ports.api}",
        grpc_port=settings.ports.grpc,
        api_key=key,
        component=component,
        server=server,
        thread=thread,
        loop=holder["loop"],
    )


@contextlib.contextmanager
def running(
    settings: Settings, components: tuple[str, ...] = ("enforcement",)
) -> Iterator[Runtime]:
    runtime = start_runtime(settings, components)
    try:
        yield runtime
    finally:
        runtime.stop()
