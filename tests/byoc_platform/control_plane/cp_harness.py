"""Real control-plane servers for the tests, started exactly as the stack supervisor does:
``python -m byoc_platform.control_plane --host 127.0.0.1 --port PORT --data-dir DIR [--seed F]``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from byoc_platform.control_plane.client import ControlPlaneClient

API_KEY = "test-control-plane-key-4f1c9a"  # deliberately not the default, to prove it is read
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cp_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env["BYOC_CONTROL_PLANE__API_KEY"] = API_KEY
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc_platform.control_plane", *args],
        env=cp_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ControlPlaneProcess:
    """One control-plane server subprocess over a data directory that outlives restarts."""

    def __init__(self, data_dir: Path, seed: Path | None = None) -> None:
        self.data_dir = data_dir
        self.seed = seed
        self.log_file = data_dir.parent / f"{data_dir.name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def start(self) -> ControlPlaneProcess:
        assert self.proc is None, "already running"
        self.port = free_port()
        args = ["--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "byoc_platform.control_plane", *args],
                env=cp_env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=1)
                if r.status_code == 200 and r.json() == {"status": "ok"}:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"control plane not healthy in 60 s:\n{self.log()}")

    def stop(self) -> int:
        assert self.proc is not None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def restart(self) -> ControlPlaneProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def client(self, api_key: str = API_KEY) -> ControlPlaneClient:
        return ControlPlaneClient(self.url, api_key)
