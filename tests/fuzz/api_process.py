"""`python -m byoc_platform serve` (every component) as a user runs it, on a running stack's
Kafka, warehouse and control plane, with topics of its own so what it accepted can be read
back without anyone else's records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from byoc_platform.auth import KeyStore
from byoc_platform.settings import Settings
from byoc_platform.stack.bootstrap import ensure_topics
from tests.stack_fixtures import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ApiProcess:
    settings: Settings
    api_key: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return self.settings.api_url

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def api_settings(stack: Settings, data_dir: Path, **api: object) -> Settings:
    """The stack's engines, own topics, data dir and ports; enforcement reads no warehouse."""
    tag = uuid.uuid4().hex[:8]
    data = stack.model_dump(mode="json", exclude={"api_key"})
    data["data_dir"] = str(data_dir)
    data["api_keys_file"] = str(data_dir / "auth" / "api_keys.json")
    data["ports"].update(api=free_port(), grpc=free_port())
    data["kafka"].update(
        events_topic=f"fuzz.events.{tag}",
        deduped_topic=f"fuzz.deduped.{tag}",
        reports_topic=f"fuzz.reports.{tag}",
    )
    data["enforcement"].update(
        database_url=None, rebuild_from_warehouse=False, consumer_group=f"fuzz-enf-{tag}"
    )
    data["ledger"]["database_url"] = None
    data["api"].update(api)
    return Settings(**data)


def start_api(settings: Settings, timeout_s: float = 120.0) -> ApiProcess:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings)
    assert settings.api_keys_file is not None
    key = KeyStore(settings.api_keys_file).create(settings.environment, label="fuzz")
    config = settings.data_dir / "settings.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"api_key"})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env.update({"BYOC_CONFIG_FILE": str(config), "PYTHONUNBUFFERED": "1"})
    log_path = settings.data_dir / "api.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "byoc_platform", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
        )
    api = ApiProcess(settings, key, proc, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime API exited {proc.returncode}:\n{api.log()[-3000:]}")
        try:
            if httpx.get(f"{api.url}/readyz", timeout=3).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            api.stop()
            raise RuntimeError(f"runtime API not ready in {timeout_s}s:\n{api.log()[-3000:]}")
        time.sleep(0.3)
