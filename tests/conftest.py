"""Shared fixtures: a session-wide stack of the real engines on free loopback ports.

- ``infra``: KMS (moto), S3 (SeaweedFS with SSE-KMS), Kafka (Tansu on s3:// storage), the
  warehouse (chdb behind the ClickHouse HTTP interface) and the control-plane stand-in,
  started once per test session by the same supervisor as `byoc up`.
- ``memory_kafka``: a Tansu broker on memory:// for fast unit tests.
Tests that need the runtime API or the stream processor start those themselves against
``infra.settings``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from byoc_platform.settings import Settings
from tests.stack_fixtures import Stack, start_stack, test_settings

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

INFRA = ["kms", "s3", "kafka", "warehouse", "control-plane"]


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = test_settings(tmp_path_factory.mktemp("infra"))
    stack = start_stack(settings, INFRA)
    try:
        yield stack
    finally:
        stack.supervisor.stop()


@pytest.fixture(scope="session")
def infra_settings(infra: Stack) -> Settings:
    return infra.settings


@pytest.fixture(scope="session")
def memory_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = test_settings(tmp_path_factory.mktemp("memkafka"))
    settings.kafka.storage = "memory"
    stack = start_stack(settings, ["kafka"])
    try:
        yield stack
    finally:
        stack.supervisor.stop()
