"""The runtime API under fuzz: `byoc serve` with every component (ingestion + enforcement) on
the session's engines (``infra``), with topics of its own, a small body limit (so oversized
bodies are cheap to send) and a short produce timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.api_process import ApiProcess, api_settings, start_api
from tests.stack_fixtures import Stack

MAX_BODY = 256 * 1024


@pytest.fixture(scope="session")
def fuzz_api(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    settings = api_settings(
        infra.settings, tmp_path_factory.mktemp("fuzz-api"), max_body_bytes=MAX_BODY
    )
    api = start_api(settings)
    try:
        yield api
    finally:
        api.stop()
