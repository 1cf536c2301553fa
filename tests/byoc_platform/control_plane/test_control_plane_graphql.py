"""GraphQL through Stigg's OFFICIAL v2 client (stigg-api-client-v2), pointed at the stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from stigg.client import Stigg, StiggClient
from stigg.generated.enums import UsageUpdateBehavior
from stigg.generated.exceptions import GraphQLClientGraphQLMultiError, GraphQLClientHttpError
from stigg.generated.input_types import (
    ReportUsageBaseInput,
    ReportUsageBulkInput,
    ReportUsageInput,
    UsageEventReportInput,
    UsageEventsReportInput,
)

from byoc_platform.catalog import Customer, Feature
from byoc_platform.control_plane.client import ControlPlaneClient
from tests.byoc_platform.control_plane.cp_harness import API_KEY, ControlPlaneProcess

HOUR = datetime(2025, 6, 1, 10, tzinfo=UTC)


@pytest.fixture
def stigg(shared_cp: ControlPlaneProcess) -> Iterator[StiggClient]:
    client = Stigg.create_client(API_KEY, api_url=shared_cp.graphql_url, enable_edge=False)
    yield client
    client.http_client.close()


def _catalog(client: ControlPlaneClient, env: str, customers: list[str]) -> None:
    client.put_entity(env, Feature(id="feature-gpt-tokens", featureType="NUMBER"))
    client.put_entity(env, Feature(id="feature-vector-storage-gb", featureType="NUMBER"))
    for c in customers:
        client.put_entity(env, Customer(id=c))


def _rollup_bulk(env: str, customers: list[str], hour: datetime) -> ReportUsageBulkInput:
    """What the hourly publisher sends: one DELTA per (customer, feature, hour), keyed."""
    return ReportUsageBulkInput(
        environment_id=env,
        usages=[
            ReportUsageBaseInput(
                customer_id=c,
                feature_id="feature-gpt-tokens",
                value=1000 + i,
                idempotency_key=f"rollup:{c}:feature-gpt-tokens:{hour.isoformat()}",
                created_at=hour,
                dimensions={"model": "gpt-4o"},
            )
            for i, c in enumerate(customers)
        ],
    )


def test_report_usage_bulk_of_100_is_accepted_and_counted(
    stigg: StiggClient, client: ControlPlaneClient
) -> None:
    env = "gql-bulk"
    customers = [f"cust-{i:03d}" for i in range(100)]
    _catalog(client, env, customers)
    result = stigg.report_usage_bulk(_rollup_bulk(env, customers, HOUR)).report_usage_bulk
    assert len(result) == 100
    assert len({m.id for m in result}) == 100
    assert [m.customer_id for m in result] == customers
    assert all(m.feature_id == "feature-gpt-tokens" for m in result)
    assert [m.current_usage for m in result] == [1000.0 + i for i in range(100)]
    assert result[0].timestamp == "2025-06-01T10:00:00Z"
    totals = client.usage_totals(env)
    assert sum(t.value for t in totals) == sum(1000 + i for i in range(100))
    records = client.usage_records(env, customer_id="cust-007")
    assert len(records) == 1 and records[0].dimensions == {"model": "gpt-4o"}
    assert records[0].idempotencyKey.startswith("rollup:cust-007:")  # type: ignore[union-attr]


def test_resending_the_same_bulk_leaves_totals_unchanged(
    stigg: StiggClient, client: ControlPlaneClient
) -> None:
    env = "gql-idempotent"
    customers = ["cust-a", "cust-b", "cust-c"]
    _catalog(client, env, customers)
    first = stigg.report_usage_bulk(_rollup_bulk(env, customers, HOUR)).report_usage_bulk
    totals_before = [(t.customerId, t.value, t.records) for t in client.usage_totals(env)]
    # The publisher re-runs the hour (retry, backfill): same keys, accepted, not counted again.
    second = stigg.report_usage_bulk(_rollup_bulk(env, customers, HOUR)).report_usage_bulk
    assert [m.id for m in second] == [m.id for m in first]
    assert [m.current_usage for m in second] == [m.current_usage for m in first]
    assert [(t.customerId, t.value, t.records) for t in client.usage_totals(env)] == totals_before
    records = client.usage_records(env)
    assert len(records) == 3 and all(r.resent == 1 for r in records)

    # A new hour has new keys and is counted.
    stigg.report_usage_bulk(_rollup_bulk(env, customers, HOUR.replace(hour=11)))
    assert client.usage_totals(env, customer_id="cust-a")[0].value == 2000.0


def test_duplicate_key_inside_one_bulk_counts_once(
    stigg: StiggClient, client: ControlPlaneClient
) -> None:
    env = "gql-dup-in-bulk"
    _catalog(client, env, ["cust-a"])
    usage = ReportUsageBaseInput(
        customer_id="cust-a", feature_id="feature-gpt-tokens", value=5, idempotency_key="k1"
    )
    result = stigg.report_usage_bulk(
        ReportUsageBulkInput(environment_id=env, usages=[usage, usage])
    ).report_usage_bulk
    assert result[0].id == result[1].id
    assert [t.value for t in client.usage_totals(env)] == [5.0]


def test_report_usage_delta_adds_and_set_replaces(
    stigg: StiggClient, client: ControlPlaneClient
) -> None:
    env = "gql-single"
    _catalog(client, env, ["cust-a"])

    def report(value: float, behavior: UsageUpdateBehavior | None, key: str) -> float | None:
        kwargs = {} if behavior is None else {"update_behavior": behavior}
        inp = ReportUsageInput(
            environment_id=env,
            customer_id="cust-a",
            feature_id="feature-vector-storage-gb",
            resource_id="team-1",
            value=value,
            idempotency_key=key,
            **kwargs,
        )
        m = stigg.report_usage(inp).report_usage
        assert (m.customer_id, m.resource_id) == ("cust-a", "team-1")
        return m.current_usage

    assert report(3, None, "k1") == 3.0  # updateBehavior left unset: DELTA
    assert report(4, UsageUpdateBehavior.DELTA, "k2") == 7.0
    assert report(2, UsageUpdateBehavior.SET, "k3") == 2.0
    assert report(1, UsageUpdateBehavior.DELTA, "k4") == 3.0
    assert report(99, UsageUpdateBehavior.SET, "k3") == 3.0  # re-sent key: ignored
    [total] = client.usage_totals(env, resource_id="team-1")
    assert (total.value, total.records) == (3.0, 4)


def test_default_environment_is_the_settings_environment(
    stigg: StiggClient, client: ControlPlaneClient
) -> None:
    before = {t.featureId: t.value for t in client.usage_totals("development")}
    m = stigg.report_usage(
        ReportUsageInput(customer_id="customer-acme", feature_id="feature-api-calls", value=2)
    ).report_usage
    assert m.current_usage == before.get("feature-api-calls", 0) + 2
    after = {t.featureId: t.value for t in client.usage_totals("development")}
    assert after["feature-api-calls"] == m.current_usage


def test_report_event_stores_events_once(stigg: StiggClient, client: ControlPlaneClient) -> None:
    env = "gql-events"
    events = UsageEventsReportInput(
        environment_id=env,
        usage_events=[
            UsageEventReportInput(
                customer_id="cust-a",
                event_name="llm.tokens",
                idempotency_key=f"ev-{i}",
                dimensions={"tokens": 100 * i, "model": "gpt-4o", "cached": i % 2 == 0},
                timestamp=HOUR,
            )
            for i in range(3)
        ],
    )
    assert stigg.report_event(events).report_event is None
    assert stigg.report_event(events).report_event is None  # re-sent: stored once
    stored = client.events(env)
    assert [e.idempotencyKey for e in stored] == ["ev-0", "ev-1", "ev-2"]
    assert stored[2].dimensions == {"tokens": 200, "model": "gpt-4o", "cached": True}
    assert stored[0].timestamp == "2025-06-01T10:00:00Z"
    assert all(e.resent == 1 for e in stored)


def _errors(call) -> list[dict]:  # type: ignore[no-untyped-def]
    with pytest.raises(GraphQLClientGraphQLMultiError) as info:
        call()
    return [{"message": e.message, **(e.extensions or {})} for e in info.value.errors]


def test_unknown_customer_or_feature_rejects_the_whole_bulk(
    stigg: StiggClient, client: ControlPlaneClient
) -> None:
    env = "gql-unknown"
    _catalog(client, env, ["cust-a"])
    good = ReportUsageBaseInput(customer_id="cust-a", feature_id="feature-gpt-tokens", value=1)
    [err] = _errors(
        lambda: stigg.report_usage_bulk(
            ReportUsageBulkInput(
                environment_id=env,
                usages=[good, good.model_copy(update={"customer_id": "ghost"})],
            )
        )
    )
    assert err["code"] == "CustomerNotFound" and "'ghost'" in err["message"]
    assert "input.usages[1]" in err["message"]
    [err] = _errors(
        lambda: stigg.report_usage(
            ReportUsageInput(environment_id=env, customer_id="cust-a", feature_id="nope", value=1)
        )
    )
    assert err["code"] == "FeatureNotFound"
    assert client.usage_records(env) == []  # atomic: the good usage was not counted either


def test_bad_input_returns_an_errors_array_naming_the_field(
    shared_cp: ControlPlaneProcess, stigg: StiggClient, client: ControlPlaneClient
) -> None:
    env = "gql-bad"
    _catalog(client, env, ["cust-a"])
    too_many = ReportUsageBulkInput(
        environment_id=env,
        usages=[
            ReportUsageBaseInput(customer_id="cust-a", feature_id="feature-gpt-tokens", value=1)
        ]
        * 101,
    )
    [err] = _errors(lambda: stigg.report_usage_bulk(too_many))
    assert err["code"] == "BadUserInput" and "input.usages" in err["message"]

    def raw(body: dict) -> httpx.Response:
        return httpx.post(shared_cp.graphql_url, headers={"X-API-KEY": API_KEY}, json=body)

    cases = [
        ({"operationName": "ReportUsage", "variables": {}}, "`input`"),
        (
            {
                "operationName": "ReportUsageBulk",
                "variables": {"input": {"usages": [{"customerId": "c", "featureId": "f"}]}},
            },
            "value",
        ),
        (
            {
                "operationName": "ReportUsageBulk",
                "variables": {
                    "input": {
                        "usages": [
                            {"customerId": "c", "featureId": "f", "value": 1, "updateBehavior": "X"}
                        ]
                    }
                },
            },
            "input.usages[0].updateBehavior",
        ),
        (
            {
                "operationName": "ReportEvent",
                "variables": {"input": {"usageEvents": [{"customerId": "c", "eventName": "e"}]}},
            },
            "idempotencyKey",
        ),
        ({"operationName": "GetPaywall", "variables": {}}, "GetPaywall"),
        ({"query": "{ x }"}, "operationName"),
    ]
    for body, needle in cases:
        r = raw(body)
        assert r.status_code == 200
        [error] = r.json()["errors"]
        assert needle in error["message"], (body, error)
        assert error["extensions"]["code"] in {"BadUserInput", "OperationNotSupported"}
    r = httpx.post(shared_cp.graphql_url, headers={"X-API-KEY": API_KEY}, content=b"{oops")
    assert r.status_code == 400 and r.json()["errors"][0]["extensions"]["code"] == "BadUserInput"
    assert client.usage_records(env) == []


def test_operation_name_header_alone_is_enough(shared_cp: ControlPlaneProcess) -> None:
    r = httpx.post(
        shared_cp.graphql_url,
        headers={"X-API-KEY": API_KEY, "x-graphql-operation-name": "ReportEvent"},
        json={
            "query": "mutation ReportEvent($input: UsageEventsReportInput!) {...}",
            "variables": {
                "input": {
                    "environmentId": "gql-header",
                    "usageEvents": [{"customerId": "c", "eventName": "e", "idempotencyKey": "k"}],
                }
            },
        },
    )
    assert r.json() == {"data": {"reportEvent": None}}


def test_wrong_api_key_is_an_http_401_for_the_official_client(
    shared_cp: ControlPlaneProcess,
) -> None:
    bad = Stigg.create_client("wrong", api_url=shared_cp.graphql_url, enable_edge=False)
    with pytest.raises(GraphQLClientHttpError) as info:
        bad.report_usage(ReportUsageInput(customer_id="c", feature_id="f", value=1))
    assert info.value.status_code == 401


def test_official_async_client_reports_usage(
    shared_cp: ControlPlaneProcess, client: ControlPlaneClient
) -> None:
    env = "gql-async"
    _catalog(client, env, ["cust-a"])

    async def run() -> float | None:
        stigg = Stigg.create_async_client(API_KEY, api_url=shared_cp.graphql_url, enable_edge=False)
        try:
            result = await stigg.report_usage_bulk(_rollup_bulk(env, ["cust-a"], HOUR))
            return result.report_usage_bulk[0].current_usage
        finally:
            await stigg.http_client.aclose()

    assert asyncio.run(run()) == 1000.0
    assert asyncio.run(run()) == 1000.0  # idempotent again
