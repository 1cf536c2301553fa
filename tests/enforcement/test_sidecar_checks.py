"""The official stigg-sidecar-sdk against the running SidecarService: every check kind and
every denial reason the local state can produce."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from stigg_sidecar_sdk import Stigg
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from tests.enforcement.harness import Runtime

R = pb.AccessDeniedReason


def call(runtime: Runtime, fn: Callable[[Stigg], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        client = Stigg(
            pb.ApiConfig(api_key="unused-by-the-sidecar"),
            remote_sidecar_host="127.0.0.1",
            remote_sidecar_port=runtime.grpc_port,
        )
        try:
            return await fn(client)
        finally:
            client.close()

    return asyncio.run(run())


def test_boolean_entitlement_granted_and_not_in_plan(runtime: Runtime) -> None:
    granted = call(
        runtime,
        lambda s: s.get_boolean_entitlement(
            pb.GetBooleanEntitlementRequest(customer_id="c-pro", feature_id="f-sso")
        ),
    )
    assert granted.has_access is True
    assert granted.access_denied_reason is None
    assert granted.entitlement.feature.id == "f-sso"
    assert granted.entitlement.feature.feature_type == pb.FeatureType.FEATURE_TYPE_BOOLEAN
    denied = call(
        runtime,
        lambda s: s.get_boolean_entitlement(
            pb.GetBooleanEntitlementRequest(customer_id="c-basic", feature_id="f-sso")
        ),
    )
    assert denied.has_access is False
    assert (
        denied.access_denied_reason == R.ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION
    )


def test_numeric_entitlement_value_and_addon_free_plan(runtime: Runtime) -> None:
    resp = call(
        runtime,
        lambda s: s.get_numeric_entitlement(
            pb.GetNumericEntitlementRequest(customer_id="c-pro", feature_id="f-seats")
        ),
    )
    assert resp.has_access is True
    assert resp.entitlement.value == 10
    assert resp.entitlement.is_unlimited is False


def test_metered_entitlement_limits_window_and_requested_usage(runtime: Runtime) -> None:
    resp = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(customer_id="c-basic", feature_id="f-tokens")
        ),
    )
    assert resp.has_access is True
    ent = resp.entitlement
    assert ent.usage_limit == 1500  # plan 1000 + add-on 500
    assert ent.reset_period == pb.EntitlementResetPeriod.ENTITLEMENT_RESET_PERIOD_MONTH
    assert ent.usage_period_start is not None and ent.usage_period_start.day == 1
    assert ent.usage_period_end > ent.usage_period_start
    assert resp.requested_usage == 1
    over = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id="c-basic",
                feature_id="f-tokens",
                options=pb.MeteredEntitlementOptions(requested_usage=1501),
            )
        ),
    )
    assert over.has_access is False
    assert over.access_denied_reason == R.ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT
    assert over.requested_usage == 1501
    soft = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id="c-pro",
                feature_id="f-tokens",
                options=pb.MeteredEntitlementOptions(requested_usage=10**9),
            )
        ),
    )
    assert soft.has_access is True  # soft limit: reported, never blocking
    assert soft.entitlement.has_soft_limit is True


def test_enum_entitlement_requested_values(runtime: Runtime) -> None:
    ok = call(
        runtime,
        lambda s: s.get_enum_entitlement(
            pb.GetEnumEntitlementRequest(
                customer_id="c-pro",
                feature_id="f-tier",
                options=pb.EnumEntitlementOptions(requested_values=["pro"]),
            )
        ),
    )
    assert ok.has_access is True
    assert sorted(ok.entitlement.enum_values) == ["basic", "pro"]
    bad = call(
        runtime,
        lambda s: s.get_enum_entitlement(
            pb.GetEnumEntitlementRequest(
                customer_id="c-pro",
                feature_id="f-tier",
                options=pb.EnumEntitlementOptions(requested_values=["max"]),
            )
        ),
    )
    assert bad.has_access is False
    assert bad.access_denied_reason == R.ACCESS_DENIED_REASON_REQUESTED_VALUES_MISMATCH


@pytest.mark.parametrize(
    ("customer", "feature", "resource", "reason"),
    [
        ("nobody", "f-sso", None, R.ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND),
        ("c-archived", "f-sso", None, R.ACCESS_DENIED_REASON_CUSTOMER_IS_ARCHIVED),
        ("c-pro", "f-missing", None, R.ACCESS_DENIED_REASON_FEATURE_NOT_FOUND),
        ("c-pro", "f-sso", "team-zzz", R.ACCESS_DENIED_REASON_CUSTOMER_RESOURCE_NOT_FOUND),
        ("c-nosub", "f-sso", None, R.ACCESS_DENIED_REASON_NO_ACTIVE_SUBSCRIPTION),
        ("c-canceled", "f-sso", None, R.ACCESS_DENIED_REASON_NO_ACTIVE_SUBSCRIPTION),
        ("c-pro", "f-unused", None, R.ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION),
        ("c-pro", "f-sso", "team-a", R.ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION),
    ],
)
def test_denial_reasons_of_boolean_checks(
    runtime: Runtime, customer: str, feature: str, resource: str | None, reason: R
) -> None:
    resp = call(
        runtime,
        lambda s: s.get_boolean_entitlement(
            pb.GetBooleanEntitlementRequest(
                customer_id=customer, feature_id=feature, resource_id=resource
            )
        ),
    )
    assert resp.has_access is False
    assert resp.access_denied_reason == reason
    assert resp.is_fallback is False


def test_feature_type_mismatch_on_a_typed_check(runtime: Runtime) -> None:
    resp = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(customer_id="c-pro", feature_id="f-sso")
        ),
    )
    assert resp.has_access is False
    assert resp.access_denied_reason == R.ACCESS_DENIED_REASON_FEATURE_TYPE_MISMATCH


def test_resource_scoped_subscription(runtime: Runtime) -> None:
    resp = call(
        runtime,
        lambda s: s.get_numeric_entitlement(
            pb.GetNumericEntitlementRequest(
                customer_id="c-pro", feature_id="f-seats", resource_id="team-a"
            )
        ),
    )
    assert resp.has_access is True
    assert resp.entitlement.value == 3  # team-a is on plan-basic, the customer on plan-pro


def test_per_call_fallback_for_unknown_customer(runtime: Runtime) -> None:
    resp = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id="not-synced-yet",
                feature_id="f-calls",
                options=pb.MeteredEntitlementOptions(
                    fallback=pb.MeteredEntitlementFallback(has_access=True, usage_limit=7)
                ),
            )
        ),
    )
    assert resp.has_access is True
    assert resp.is_fallback is True
    assert resp.entitlement.usage_limit == 7


def test_generic_get_entitlement_and_v2(runtime: Runtime) -> None:
    resp = call(
        runtime,
        lambda s: s.get_entitlement(
            pb.GetEntitlementRequest(
                customer_id="c-pro",
                feature_id="f-tier",
                options=pb.GetEntitlementOptions(requested_values=["basic"]),
            )
        ),
    )
    assert resp.has_access is True
    assert list(resp.enum.enum_values) == ["basic", "pro"]
    v2 = call(
        runtime,
        lambda s: s.get_entitlement_v2(
            pb.GetEntitlementV2Request(
                customer_id="c-basic",
                feature_id="f-calls",
                options=pb.GetEntitlementOptions(requested_usage=101),
            )
        ),
    )
    assert v2.entitlement.has_access is False
    assert v2.entitlement.access_denied_reason == (
        R.ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT
    )
    assert v2.entitlement.metered.usage_limit == 100


def test_get_entitlements_lists_the_scope(runtime: Runtime) -> None:
    resp = call(
        runtime, lambda s: s.get_entitlements(pb.GetEntitlementsRequest(customer_id="c-basic"))
    )
    assert resp.access_denied_reason is None
    ids = set()
    for item in resp.entitlements:
        import betterproto

        _, inner = betterproto.which_one_of(item, "entitlement")
        ids.add(inner.feature.id)
    assert ids == {"f-seats", "f-tier", "f-calls", "f-tokens", "f-storage"}
    missing = call(
        runtime, lambda s: s.get_entitlements(pb.GetEntitlementsRequest(customer_id="nobody"))
    )
    assert missing.entitlements == []
    assert missing.access_denied_reason == R.ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND


def test_reload_entitlements_reports_existence(runtime: Runtime) -> None:
    yes = call(
        runtime,
        lambda s: s.reload_entitlements(
            pb.ReloadEntitlementsRequest(customer_id="c-pro", resource_id="team-a")
        ),
    )
    assert yes.entitled_entity_exists is True
    no = call(
        runtime, lambda s: s.reload_entitlements(pb.ReloadEntitlementsRequest(customer_id="nobody"))
    )
    assert no.entitled_entity_exists is False


def test_grpc_serves_only_its_environment(runtime: Runtime) -> None:
    # c-staging exists only in "staging"; the sidecar port serves "development".
    resp = call(
        runtime,
        lambda s: s.get_boolean_entitlement(
            pb.GetBooleanEntitlementRequest(customer_id="c-staging", feature_id="f-sso")
        ),
    )
    assert resp.has_access is False
    assert resp.access_denied_reason == R.ACCESS_DENIED_REASON_CUSTOMER_NOT_FOUND


def test_early_denials_echo_each_caller_s_own_request(runtime: Runtime) -> None:
    """Answers are cached by what they are made of. Denials decided before the feature's own
    path (CustomerNotFound, NoActiveSubscription) left the decision's requested values and
    usage empty, so the cache key missed them: a second customer got the first one's
    requested_values, and requested_usage came back 0."""

    def enum(customer: str, values: list[str]) -> Any:
        return call(
            runtime,
            lambda s: s.get_enum_entitlement(
                pb.GetEnumEntitlementRequest(
                    customer_id=customer,
                    feature_id="f-tier",
                    options=pb.EnumEntitlementOptions(requested_values=values),
                )
            ),
        )

    for customer in ("c-nosub", "c-unknown"):
        first, second = enum(customer, ["pro"]), enum(customer, ["max", "zzz"])
        assert first.has_access is False and second.has_access is False
        assert (list(first.requested_values), list(second.requested_values)) == (
            ["pro"],
            ["max", "zzz"],
        )
    metered = call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id="c-nosub",
                feature_id="f-tokens",
                options=pb.MeteredEntitlementOptions(requested_usage=5),
            )
        ),
    )
    assert metered.has_access is False
    assert metered.requested_usage == 5
