"""The official ``stigg`` REST SDK against the running runtime API: entitlement checks.

The REST SDK and stigg-api-client-v2 both install a top-level ``stigg`` package; the GraphQL
client's ``stigg/__init__.py`` wins, so the REST client is imported from ``stigg._client``.
"""

from __future__ import annotations

import pytest
from stigg._client import Stigg as RestStigg
from stigg._exceptions import AuthenticationError, BadRequestError, PermissionDeniedError

from tests.enforcement.harness import Runtime


def rest(runtime: Runtime, key: str | None = None) -> RestStigg:
    return RestStigg(base_url=runtime.api_url, api_key=key or runtime.api_key, max_retries=0)


def test_boolean_numeric_enum_checks(runtime: Runtime) -> None:
    client = rest(runtime)
    sso = client.v1.customers.check_entitlement("c-pro", feature_id="f-sso").data
    assert sso.type == "FEATURE"
    assert sso.is_granted is True
    assert sso.feature is not None and sso.feature.feature_type == "BOOLEAN"
    seats = client.v1.customers.check_entitlement(
        "c-pro", feature_id="f-seats", requested_usage=11
    ).data
    assert seats.is_granted is False
    assert seats.access_denied_reason == "RequestedUsageExceedingLimit"
    assert seats.usage_limit == 10
    tier = client.v1.customers.check_entitlement(
        "c-pro", feature_id="f-tier", requested_values=["basic", "pro"]
    ).data
    assert tier.is_granted is True
    mismatch = client.v1.customers.check_entitlement(
        "c-pro", feature_id="f-tier", requested_values=["basic", "max"]
    ).data
    assert mismatch.is_granted is False
    assert mismatch.access_denied_reason == "RequestedValuesMismatch"


def test_metered_check_fields(runtime: Runtime) -> None:
    data = rest(runtime).v1.customers.check_entitlement("c-basic", feature_id="f-calls").data
    assert data.is_granted is True
    assert data.usage_limit == 100
    assert data.reset_period == "DAY"
    assert data.usage_period_start is not None and data.usage_period_end is not None
    assert (data.usage_period_end - data.usage_period_start).total_seconds() == 86400
    assert data.current_usage == 0


@pytest.mark.parametrize(
    ("customer", "feature", "resource", "reason"),
    [
        ("nobody", "f-sso", None, "CustomerNotFound"),
        ("c-archived", "f-sso", None, "CustomerIsArchived"),
        ("c-pro", "f-missing", None, "FeatureNotFound"),
        ("c-pro", "f-sso", "team-zzz", "CustomerResourceNotFound"),
        ("c-nosub", "f-sso", None, "NoActiveSubscription"),
        ("c-pro", "f-unused", None, "NoFeatureEntitlementInSubscription"),
    ],
)
def test_denial_reasons(
    runtime: Runtime, customer: str, feature: str, resource: str | None, reason: str
) -> None:
    kwargs = {"resource_id": resource} if resource else {}
    data = rest(runtime).v1.customers.check_entitlement(customer, feature_id=feature, **kwargs).data
    assert data.is_granted is False
    assert data.access_denied_reason == reason


def test_retrieve_entitlements(runtime: Runtime) -> None:
    data = rest(runtime).v1.customers.retrieve_entitlements("c-pro", resource_id="team-a").data
    assert data.access_denied_reason is None
    features = {e.feature.id: e for e in data.entitlements if e.type == "FEATURE"}
    assert set(features) == {"f-seats", "f-tier", "f-calls", "f-tokens", "f-storage"}
    assert features["f-seats"].usage_limit == 3
    nosub = rest(runtime).v1.customers.retrieve_entitlements("c-nosub").data
    assert nosub.entitlements == []
    assert nosub.access_denied_reason == "NoActiveSubscription"


def test_bad_parameters_are_400_naming_the_parameter(runtime: Runtime) -> None:
    client = rest(runtime)
    with pytest.raises(BadRequestError, match="featureId and currencyId"):
        client.v1.customers.check_entitlement("c-pro")
    with runtime.http() as http:
        resp = http.get(
            "/api/v1/customers/c-pro/entitlements/check",
            params={"featureId": "f-calls", "requestedUsage": "lots"},
        )
    assert resp.status_code == 400
    assert "requestedUsage" in resp.json()["error"]["message"]
    assert resp.headers["x-should-retry"] == "false"


def test_keys_are_scoped_to_their_environment(runtime: Runtime) -> None:
    staging_key = runtime.key_for("staging")
    runtime.sync_now()  # the runtime now also syncs "staging"
    staging = rest(runtime, staging_key)
    own = staging.v1.customers.check_entitlement("c-staging", feature_id="f-sso").data
    assert own.is_granted is True
    other = staging.v1.customers.check_entitlement("c-pro", feature_id="f-sso").data
    assert other.is_granted is False
    assert other.access_denied_reason == "CustomerNotFound"
    dev = rest(runtime).v1.customers.check_entitlement("c-staging", feature_id="f-sso").data
    assert dev.access_denied_reason == "CustomerNotFound"
    with pytest.raises(PermissionDeniedError):
        staging.v1.customers.check_entitlement(
            "c-staging", feature_id="f-sso", x_environment_id="development"
        )


def test_unknown_key_is_401(runtime: Runtime) -> None:
    with pytest.raises(AuthenticationError):
        rest(runtime, "byoc_not-a-real-key").v1.customers.check_entitlement(
            "c-pro", feature_id="f-sso"
        )


def test_openapi_documents_every_enforcement_route(runtime: Runtime) -> None:
    with runtime.http() as http:
        paths = http.get("/openapi.json").json()["paths"]
    expected = {
        "/api/v1/customers/{id}/entitlements/check": "get",
        "/api/v1/customers/{id}/entitlements": "get",
        "/api/v1/credits/grants": "post",
        "/api/v1/credits/grants/{id}/void": "post",
        "/api/v1/credits/consumption": "post",
        "/api/v1/credits/consumption/async": "post",
        "/api/v1/credits/reservations/{id}/release": "post",
        "/api/v1/credits/ledger": "get",
    }
    for path, method in expected.items():
        operation = paths[path][method]
        assert {"200", "400", "401"} <= set(operation["responses"])
    assert "get" in paths["/api/v1/credits/grants"]


def test_oversized_numbers_and_cursors_are_400_not_500(runtime: Runtime) -> None:
    with runtime.http() as http:
        huge = http.post(
            "/api/v1/credits/consumption",
            content=b'{"amount": 1' + b"0" * 400 + b', "currencyId": "credits", '
            b'"customerId": "c-pro", "idempotencyKey": "huge"}',
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 400
        cursor = http.get(
            "/api/v1/credits/ledger", params={"customerId": "c-pro", "after": "9" * 19}
        )
        assert cursor.status_code == 400
        assert "after" in cursor.json()["error"]["message"]


def test_metrics_expose_sync_freshness(runtime: Runtime) -> None:
    with runtime.http() as http:
        text = http.get("/metrics").text
    assert "byoc_enforcement_sync_stale 0.0" in text
    assert "byoc_enforcement_sync_age_seconds" in text
