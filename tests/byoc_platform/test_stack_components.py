"""Configuration the supervisor writes for its children."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance

from byoc_platform.stack.components import BY_NAME
from tests.stack_fixtures import test_settings


def test_local_dagster_instance_limits_pools_to_one(tmp_path: Path) -> None:
    settings = test_settings(tmp_path)
    BY_NAME["dagster"].prepare(settings)
    instance = DagsterInstance.from_config(str(settings.data_dir / "dagster"))
    try:
        # published_usage's pool: two publishes of one hour never run at once.
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
    finally:
        instance.dispose()


def test_the_kms_ends_when_it_cannot_listen(tmp_path: Path) -> None:
    # moto binds in a thread of its own and used to wait for ever: `byoc up` then waited the
    # whole start timeout for a component that could never be healthy.
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "byoc_platform.kms_server",
                "--state-file",
                str(tmp_path / "keys.state"),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"kms: cannot listen on 127.0.0.1:{port}" in done.stderr
