"""Configuration the supervisor writes for its children."""

from __future__ import annotations

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
