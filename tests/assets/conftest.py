"""Fixtures of the Dagster-side tests: the session stack, an isolated environment, a runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from dagster import AssetSelection, ExecuteInProcessResult, materialize

from dagster_project.assembly import ASSETS, CHECKS
from dagster_project.resources import local_resources
from tests.assets.usage_data import new_environment, settings_file
from tests.stack_fixtures import Stack

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def config_file(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session stack's settings as a YAML file (what resources read)."""
    return settings_file(tmp_path_factory.mktemp("dagster-settings"), infra.settings)


@pytest.fixture
def env(infra: Stack) -> str:
    return new_environment(infra.settings)


@pytest.fixture
def ch(infra: Stack) -> Iterator[Any]:
    client = infra.clickhouse()
    try:
        yield client
    finally:
        client.close()


def run(
    selection: AssetSelection,
    partition_key: str | None,
    config_file: str,
    run_config: dict[str, Any] | None = None,
) -> ExecuteInProcessResult:
    """Materialize ``selection`` in process, with the local resources of ``config_file``."""
    return materialize(
        [*ASSETS, *CHECKS],
        selection=selection,
        partition_key=partition_key,
        resources=local_resources(config_file),
        run_config=run_config,
        raise_on_error=False,
    )


def metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [asset]]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def materialized(result: ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}


def checks(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}
