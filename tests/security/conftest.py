"""A whole local stack of its own for the security tests (the same supervisor as `byoc up`),
seeded with two environments that share customer ids, with one API key per environment.

It is separate from the session's ``infra`` because these tests inspect everything it wrote
(logs, key files) and its listening sockets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from byoc_platform.auth import KeyStore
from byoc_platform.settings import Settings
from byoc_platform.stack.bootstrap import ensure_api_key
from byoc_platform.stack.supervisor import Supervisor
from tests.stack_fixtures import test_settings

SEED = Path(__file__).with_name("seed.yaml")
COMPONENTS = ["kms", "s3", "kafka", "warehouse", "control-plane", "api", "stream"]
CONTROL_PLANE_KEY = "cp-secret-0f3b9c1e5a7d42e8b6c4"
S3_SECRET = "s3-secret-7c2d9e4f1a6b8035"


@dataclass
class SecureStack:
    settings: Settings
    supervisor: Supervisor
    key_a: str  # environment env-a (the stack's own environment)
    key_b: str  # environment env-b

    def http(self, key: str | None = None, **headers: str) -> httpx.Client:
        if key is not None:
            headers["X-API-KEY"] = key
        return httpx.Client(base_url=self.settings.api_url, headers=headers, timeout=30)

    def logs(self) -> dict[Path, str]:
        logs_dir = self.settings.data_dir / "logs"
        return {p: p.read_text(errors="replace") for p in sorted(logs_dir.glob("*.log"))}


def restart(supervisor: Supervisor, name: str, timeout_s: float = 120.0) -> None:
    """SIGKILL one component and let the supervisor start it again (healthy on return)."""
    old = supervisor.kill(name)
    supervisor.restart = True
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            supervisor.check()  # restarts synchronously, returning once it is healthy
            running = supervisor.running.get(name)
            if running is not None and running.process.pid != old:
                return
            assert time.monotonic() < deadline, f"{name} did not come back"
            time.sleep(0.3)
    finally:
        supervisor.restart = False


def wait_synced(stack: SecureStack, timeout_s: float = 60.0) -> None:
    """Until enforcement answers from the seeded catalog in both environments."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = True
        for key, customer in ((stack.key_a, "only-a"), (stack.key_b, "only-b")):
            with stack.http(key) as http:
                body = http.get(
                    f"/api/v1/customers/{customer}/entitlements/check",
                    params={"featureId": "f-calls"},
                ).json()
            ok = ok and body.get("data", {}).get("isGranted") is True
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"catalog not synced in {timeout_s}s: {body}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    settings = test_settings(
        tmp_path_factory.mktemp("secure") / "data",
        environment="env-a",
        control_plane={"api_key": CONTROL_PLANE_KEY, "seed_file": SEED, "sync_interval_s": 1.0},
        s3={"secret_key": S3_SECRET},
    )
    supervisor = Supervisor(settings, COMPONENTS, restart=False)
    supervisor.start()
    try:
        assert settings.api_keys_file is not None
        stack = SecureStack(
            settings=settings,
            supervisor=supervisor,
            key_a=ensure_api_key(settings),
            key_b=KeyStore(settings.api_keys_file).create("env-b", label="security tests"),
        )
        wait_synced(stack)
        yield stack
    finally:
        supervisor.stop()
