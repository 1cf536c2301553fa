"""Fixtures: one ``byoc serve --role ingest`` subprocess on the session infra, and readers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack_fixtures import Stack
from tests.streaming.ingest import harness
from tests.streaming.ingest.harness import ApiProcess, KafkaReader, start_api

# Small enough to test 413 on body size cheaply; far above a 1000-event batch.
MAX_BODY = 2 * 1024 * 1024
MAX_SKEW_S = 120


@pytest.fixture(scope="session")
def ingest_api(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    api = start_api(
        infra.settings,
        infra.api_key,
        tmp_path_factory.mktemp("ingest-api"),
        extra_env={
            "BYOC_API__MAX_BODY_BYTES": str(MAX_BODY),
            "BYOC_API__MAX_FUTURE_SKEW_S": str(MAX_SKEW_S),
        },
    )
    try:
        yield api
    finally:
        api.stop()


# Readers are shared (joining a consumer group costs seconds on Tansu); tests tell their
# records apart by unique customer ids.
@pytest.fixture(scope="session")
def events_reader(infra: Stack) -> Iterator[KafkaReader]:
    reader = harness.events_reader(infra.settings)
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture(scope="session")
def reports_reader(infra: Stack) -> Iterator[KafkaReader]:
    reader = harness.reports_reader(infra.settings)
    try:
        yield reader
    finally:
        reader.close()
