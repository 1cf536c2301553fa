"""The runtime API under fuzz: `byoc serve` with every component (ingestion + enforcement) on
the session's engines (``infra``), with topics of its own, a small body limit (so oversized
bodies are cheap to send) and short header and body timeouts (so slow clients are cut off
quickly)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.api_process import ApiProcess, api_settings, start_api
from tests.stack_fixtures import Stack

MAX_BODY = 256 * 1024
SLOW_CLIENT_S = 3.0  # api.header_timeout_s and api.body_timeout_s of the API under fuzz


@pytest.fixture(scope="session")
def fuzz_api(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    settings = api_settings(
        infra.settings,
        tmp_path_factory.mktemp("fuzz-api"),
        max_body_bytes=MAX_BODY,
        header_timeout_s=SLOW_CLIENT_S,
        body_timeout_s=SLOW_CLIENT_S,
    )
    api = start_api(settings)
    try:
        yield api
    finally:
        api.stop()
