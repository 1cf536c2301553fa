"""The usage hook (plugins.RuntimeHooks.usage): how ingestion and the owner of the usage
counters (enforcement) cooperate in one process.

The applier here is a stand-in for enforcement's, registered exactly as enforcement would; the
app, the producer and the broker are real (in-process server on a free port, session Kafka).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest
import uvicorn

from byoc_platform.api_errors import ApiError
from byoc_platform.events import UsageReport
from byoc_platform.plugins import UsageOutcome
from byoc_platform.runtime_server import build_app, create_context
from streaming.ingest.component import IngestComponent
from tests.stack_fixtures import Stack, free_port
from tests.streaming.ingest.harness import KafkaReader, count, items_of, unique

PERIOD_START, PERIOD_END = 1_767_225_600_000, 1_769_904_000_000  # 2026-01-01, 2026-02-01


class Applier:
    def __init__(self) -> None:
        self.applied: list[tuple[str, list[UsageReport]]] = []

    def validate_usage(
        self, environment: str, reports: Sequence[UsageReport], path: str = "usages"
    ) -> None:
        for index, report in enumerate(reports):
            if report.featureId == "unknown-feature":
                raise ApiError(404, f"feature 'unknown-feature' not found (usages[{index}])")

    async def apply_usage(
        self, environment: str, reports: Sequence[UsageReport]
    ) -> list[UsageOutcome]:
        self.applied.append((environment, list(reports)))
        return [
            UsageOutcome(
                # "noisy": a float sum that is not a 5-decimal value (0.1 + 0.2).
                current_usage=(0.2 if r.featureId == "noisy" else 100) + r.value,
                usage_period_start=PERIOD_START,
                usage_period_end=PERIOD_END,
            )
            for r in reports
        ]


@pytest.fixture(scope="module")
def hooked(infra: Stack) -> Iterator[tuple[str, Applier]]:
    context = create_context(infra.settings)
    applier = Applier()
    context.hooks.usage = applier
    app = build_app(context, [IngestComponent(context)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", applier
    finally:
        server.should_exit = True
        thread.join(30)


def test_rest_usage_answers_with_the_counters_outcome(
    infra: Stack, hooked: tuple[str, Applier], reports_reader: KafkaReader
) -> None:
    url, applier = hooked
    customer = unique("hook")
    response = httpx.post(
        f"{url}/api/v2/usage",
        json={"usages": [{"customerId": customer, "featureId": "seats", "value": 5}]},
        headers={"X-API-KEY": infra.api_key},
    )
    assert response.status_code == 200
    [usage] = response.json()["data"]["usages"]
    assert usage["currentUsage"] == 105
    assert usage["usagePeriodStart"] == "2026-01-01T00:00:00.000Z"
    assert usage["usagePeriodEnd"] == "2026-02-01T00:00:00.000Z"
    environment, [report] = applier.applied[-1]
    assert environment == infra.settings.environment and report.customerId == customer
    found = reports_reader.read([customer], lambda f: count(f, [customer]) >= 1)
    assert items_of(found, customer) == [report], "what was applied is what is durable"


def test_refused_by_the_counters_owner_nothing_is_written_or_applied(
    infra: Stack, hooked: tuple[str, Applier], reports_reader: KafkaReader
) -> None:
    url, applier = hooked
    customer = unique("hook-404")
    applied_before = len(applier.applied)
    headers = {"X-API-KEY": infra.api_key}
    response = httpx.post(
        f"{url}/api/v2/usage",
        json={
            "usages": [
                {"customerId": customer, "featureId": "seats", "value": 1},
                {"customerId": customer, "featureId": "unknown-feature", "value": 1},
            ]
        },
        headers=headers,
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "NOT_FOUND", "message": "feature 'unknown-feature' not found (usages[1])"}
    }
    graphql = httpx.post(
        f"{url}/graphql",
        json={
            "query": "mutation ReportUsage($input: ReportUsageInput!) "
            "{ reportUsage(input: $input) { id } }",
            "operationName": "ReportUsage",
            "variables": {
                "input": {"customerId": customer, "featureId": "unknown-feature", "value": 1}
            },
        },
        headers=headers,
    )
    assert graphql.status_code == 200
    assert graphql.json()["errors"][0]["extensions"]["code"] == "NotFound"
    assert len(applier.applied) == applied_before
    sentinel = httpx.post(
        f"{url}/api/v2/usage",
        json={"usages": [{"customerId": customer, "featureId": "sentinel", "value": 1}]},
        headers=headers,
    )
    assert sentinel.status_code == 200
    found = reports_reader.read([customer], lambda f: count(f, [customer]) >= 1)
    assert [u.featureId for u in items_of(found, customer)] == ["sentinel"]


def test_rest_usage_answers_current_usage_in_whole_5_decimal_units(
    infra: Stack, hooked: tuple[str, Applier]
) -> None:
    url, _ = hooked
    response = httpx.post(
        f"{url}/api/v2/usage",
        json={"usages": [{"customerId": unique("noisy"), "featureId": "noisy", "value": 0.1}]},
        headers={"X-API-KEY": infra.api_key},
    )
    assert response.status_code == 200
    assert response.json()["data"]["usages"][0]["currentUsage"] == 0.3  # not 0.30000000000000004
    graphql = httpx.post(
        f"{url}/graphql",
        json={
            "query": "mutation ReportUsage($input: ReportUsageInput!) "
            "{ reportUsage(input: $input) { currentUsage } }",
            "operationName": "ReportUsage",
            "variables": {
                "input": {"customerId": unique("noisy"), "featureId": "noisy", "value": 0.1}
            },
        },
        headers={"X-API-KEY": infra.api_key},
    )
    assert graphql.json()["data"]["reportUsage"]["currentUsage"] == 0.3  # GraphQL too
