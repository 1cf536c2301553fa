"""A key of environment A can neither write events for environment B nor read (or spend) its
entitlements and credits; asking for B explicitly is refused, never answered.

Both environments hold a customer ``shared-cust`` with different plans and grants, so a leak
shows up as B's numbers in A's answers.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from stigg._client import Stigg
from stigg._exceptions import APIStatusError, PermissionDeniedError

from tests.security.conftest import SecureStack

pytestmark = pytest.mark.integration


def sdk(stack: SecureStack, key: str) -> Stigg:
    return Stigg(api_key=key, base_url=stack.settings.api_url, max_retries=0)


def calls_check(client: Stigg, customer: str) -> Any:
    return client.v1.customers.check_entitlement(customer, feature_id="f-calls").data


def credits_check(client: Stigg, customer: str) -> Any:
    return client.v1.customers.check_entitlement(customer, currency_id="credits").data


def test_entitlements_are_answered_from_the_keys_environment(secure_stack: SecureStack) -> None:
    a, b = sdk(secure_stack, secure_stack.key_a), sdk(secure_stack, secure_stack.key_b)
    assert calls_check(a, "shared-cust").usage_limit == 10
    assert calls_check(b, "shared-cust").usage_limit == 999
    assert a.v1.customers.check_entitlement("shared-cust", feature_id="f-sso").data.is_granted is (
        False
    )
    assert b.v1.customers.check_entitlement("shared-cust", feature_id="f-sso").data.is_granted
    hidden = calls_check(a, "only-b")
    assert hidden.is_granted is False and hidden.access_denied_reason == "CustomerNotFound"
    listed = a.v1.customers.retrieve_entitlements("only-b").data
    assert listed.entitlements == []
    assert calls_check(b, "only-a").access_denied_reason == "CustomerNotFound"


def test_naming_another_environment_is_refused(secure_stack: SecureStack) -> None:
    a = sdk(secure_stack, secure_stack.key_a)
    with pytest.raises(PermissionDeniedError):
        a.v1.customers.check_entitlement("only-b", feature_id="f-calls", x_environment_id="env-b")
    with pytest.raises(PermissionDeniedError):
        a.v1.credits.grants.list(customer_id="only-b", x_environment_id="env-b")


def test_credits_of_another_environment_are_invisible(secure_stack: SecureStack) -> None:
    a, b = sdk(secure_stack, secure_stack.key_a), sdk(secure_stack, secure_stack.key_b)
    assert credits_check(a, "shared-cust").usage_limit == 7
    assert credits_check(b, "shared-cust").usage_limit == 5000
    assert credits_check(a, "only-b").is_granted is False
    assert [g.id for g in a.v1.credits.grants.list(customer_id="only-b")] == []
    assert [g.id for g in a.v1.credits.grants.list(customer_id="shared-cust")] == ["grant-a-shared"]
    assert list(a.v1.credits.list_ledger(customer_id="only-b")) == []
    assert {e.credit_grant_id for e in a.v1.credits.list_ledger(customer_id="shared-cust")} == {
        "grant-a-shared"
    }


def test_credits_of_another_environment_cannot_be_spent_or_voided(
    secure_stack: SecureStack,
) -> None:
    a, b = sdk(secure_stack, secure_stack.key_a), sdk(secure_stack, secure_stack.key_b)
    before = credits_check(b, "only-b")
    with pytest.raises(APIStatusError) as consumed:
        a.v1.credits.consumption.consume(
            amount=1, currency_id="credits", customer_id="only-b", idempotency_key="steal-1"
        )
    assert 400 <= consumed.value.status_code < 500
    with pytest.raises(APIStatusError) as voided:
        a.v1.credits.grants.void("grant-b-only")
    assert voided.value.status_code == 404
    with pytest.raises(APIStatusError) as reserved:
        a.v1.credits.reservations.release(
            "no-such-reservation", consumed_amount=1, currency_id="credits", customer_id="only-b"
        )
    assert 400 <= reserved.value.status_code < 500
    after = credits_check(b, "only-b")
    assert (after.usage_limit, after.current_usage) == (before.usage_limit, before.current_usage)
    assert {g.id: g.status for g in b.v1.credits.grants.list(customer_id="only-b")} == {
        "grant-b-only": "ACTIVE"
    }


def stored_environments(stack: SecureStack, keys: list[str], timeout_s: float = 60) -> dict:
    """idempotency key -> environment of the stored events, once all are stored."""
    from byoc_platform.clients import clickhouse

    ch = clickhouse(stack.settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            rows = ch.query(
                f"SELECT idempotency_key, environment FROM "
                f"{stack.settings.clickhouse.database}.usage_events FINAL "
                "WHERE idempotency_key IN {keys:Array(String)}",
                parameters={"keys": keys},
            ).result_rows
            found = {r[0]: r[1] for r in rows}
            if len(found) >= len(keys) or time.monotonic() > deadline:
                return found
            time.sleep(0.5)
    finally:
        ch.close()


def test_events_are_written_to_the_keys_environment_only(secure_stack: SecureStack) -> None:
    a, b = sdk(secure_stack, secure_stack.key_a), sdk(secure_stack, secure_stack.key_b)
    b_usage_before = calls_check(b, "shared-cust").current_usage
    tag = uuid.uuid4().hex[:8]
    rest_keys = [f"iso-rest-{tag}-{i}" for i in range(3)]
    events = [
        {"customer_id": "shared-cust", "event_name": "api_call", "idempotency_key": k}
        for k in rest_keys
    ]
    # The SDK's X-ENVIRONMENT-ID names B: either refused, or written to the key's environment.
    try:
        a.v1.events.report(events=events, x_environment_id="env-b")
    except PermissionDeniedError:
        a.v1.events.report(events=events)
    gql_key = f"iso-gql-{tag}"
    with secure_stack.http(secure_stack.key_a) as http:
        response = http.post(
            "/graphql",
            json={
                "operationName": "ReportEvent",
                "query": "mutation ReportEvent($input: UsageEventsReportInput!) "
                "{ reportEvent(input: $input) }",
                "variables": {
                    "input": {
                        "environmentId": "env-b",
                        "usageEvents": [
                            {
                                "customerId": "shared-cust",
                                "eventName": "api_call",
                                "idempotencyKey": gql_key,
                            }
                        ],
                    }
                },
            },
        )
    assert response.status_code in (200, 403), response.text
    wanted = rest_keys + ([gql_key] if "errors" not in response.json() else [])
    stored = stored_environments(secure_stack, wanted)
    assert stored == dict.fromkeys(wanted, "env-a")
    # A's counter moved; B's did not.
    deadline = time.monotonic() + 60
    while calls_check(a, "shared-cust").current_usage < len(wanted):
        assert time.monotonic() < deadline, "env-a counter did not count the events"
        time.sleep(0.5)
    assert calls_check(b, "shared-cust").current_usage == b_usage_before


def test_aggregated_usage_for_another_environments_customer_is_refused(
    secure_stack: SecureStack,
) -> None:
    a, b = sdk(secure_stack, secure_stack.key_a), sdk(secure_stack, secure_stack.key_b)
    before = calls_check(b, "only-b").current_usage
    with pytest.raises(APIStatusError) as refused:
        a.v2.usage.report(usages=[{"customer_id": "only-b", "feature_id": "f-calls", "value": 5}])
    assert 400 <= refused.value.status_code < 500
    assert calls_check(b, "only-b").current_usage == before
