"""Usage reported through the sidecar (ReportUsage, ReportUsageBulk) is reflected at once in
currentUsage of both the gRPC and the REST checks, and feeds budgets."""

from __future__ import annotations

import uuid

import grpclib
import pytest
from stigg._client import Stigg as RestStigg
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.catalog import Customer, Subscription
from tests.enforcement.harness import ControlPlaneProcess, Runtime
from tests.enforcement.test_sidecar_checks import call

R = pb.AccessDeniedReason


def new_customer(cp: ControlPlaneProcess, runtime: Runtime, plan: str = "plan-basic") -> str:
    customer_id = f"cu-{uuid.uuid4().hex[:8]}"
    with cp.client() as client:
        client.put_entity("development", Customer(id=customer_id, name=customer_id))
        client.put_entity(
            "development",
            Subscription(
                id=f"s-{customer_id}",
                customerId=customer_id,
                planId=plan,
                startDate="2025-01-01T00:00:00Z",
            ),
        )
    runtime.sync_now()
    return customer_id


def report(
    runtime: Runtime,
    customer: str,
    feature: str,
    value: float,
    *,
    set_: bool = False,
    resource: str | None = None,
) -> pb.ReportUsageResponse:
    behavior = (
        pb.UsageUpdateBehavior.USAGE_UPDATE_BEHAVIOR_SET
        if set_
        else pb.UsageUpdateBehavior.USAGE_UPDATE_BEHAVIOR_DELTA
    )
    return call(
        runtime,
        lambda s: s.report_usage(
            pb.ReportUsageRequest(
                customer_id=customer,
                feature_id=feature,
                value=value,
                update_behavior=behavior,
                resource_id=resource,
            )
        ),
    )


def metered(
    runtime: Runtime,
    customer: str,
    feature: str,
    requested: float | None = None,
    resource: str | None = None,
) -> pb.GetMeteredEntitlementResponse:
    options = pb.MeteredEntitlementOptions(requested_usage=requested) if requested else None
    return call(
        runtime,
        lambda s: s.get_metered_entitlement(
            pb.GetMeteredEntitlementRequest(
                customer_id=customer, feature_id=feature, resource_id=resource, options=options
            )
        ),
    )


def test_delta_usage_is_reflected_in_grpc_and_rest_checks(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    customer = new_customer(control_plane, runtime)
    first = report(runtime, customer, "f-calls", 40)
    assert first.current_usage == 40
    assert first.usage_period_start is not None and first.measurement_id
    second = report(runtime, customer, "f-calls", 20)
    assert second.current_usage == 60
    check = metered(runtime, customer, "f-calls")
    assert check.entitlement.current_usage == 60
    assert check.has_access is True
    assert metered(runtime, customer, "f-calls", requested=41).access_denied_reason == (
        R.ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT
    )
    rest = RestStigg(base_url=runtime.api_url, api_key=runtime.api_key, max_retries=0)
    data = rest.v1.customers.check_entitlement(customer, feature_id="f-calls").data
    assert data.current_usage == 60
    assert data.is_granted is True
    # Usage of another customer is untouched.
    assert metered(runtime, "c-basic", "f-calls").entitlement.current_usage == 0


def test_set_usage_replaces_the_value(control_plane: ControlPlaneProcess, runtime: Runtime) -> None:
    customer = new_customer(control_plane, runtime)
    assert report(runtime, customer, "f-storage", 7, set_=True).current_usage == 7
    assert report(runtime, customer, "f-storage", 3, set_=True).current_usage == 3
    assert report(runtime, customer, "f-storage", 2).current_usage == 5
    check = metered(runtime, customer, "f-storage", requested=6)
    assert check.entitlement.current_usage == 5
    assert check.has_access is False  # 5 + 6 > 10


def test_usage_reaching_the_limit_denies_the_next_unit(
    control_plane: ControlPlaneProcess, runtime: Runtime
) -> None:
    customer = new_customer(control_plane, runtime)
    report(runtime, customer, "f-calls", 99)
    assert metered(runtime, customer, "f-calls").has_access is True
    report(runtime, customer, "f-calls", 1)
    denied = metered(runtime, customer, "f-calls")
    assert denied.has_access is False
    assert denied.entitlement.current_usage == 100


def test_bulk_report(control_plane: ControlPlaneProcess, runtime: Runtime) -> None:
    customer = new_customer(control_plane, runtime)
    resp = call(
        runtime,
        lambda s: s.report_usage_bulk(
            pb.ReportUsageBulkRequest(
                usages=[
                    pb.ReportUsageRequest(customer_id=customer, feature_id="f-calls", value=3),
                    pb.ReportUsageRequest(customer_id=customer, feature_id="f-tokens", value=250),
                ]
            )
        ),
    )
    assert [u.current_usage for u in resp.usages] == [3, 250]
    assert metered(runtime, customer, "f-tokens").entitlement.current_usage == 250


def test_budget_of_a_resource_caps_usage(runtime: Runtime) -> None:
    # c-budget/agent-1 is on plan-pro (1000 calls a day) with a budget of 5 calls a day.
    for _ in range(5):
        report(runtime, "c-budget", "f-calls", 1, resource="agent-1")
    resp = metered(runtime, "c-budget", "f-calls", resource="agent-1")
    assert resp.has_access is False
    assert resp.access_denied_reason == R.ACCESS_DENIED_REASON_BUDGET_EXCEEDED
    assert resp.entitlement.current_usage == 5


def test_bad_reports_are_grpc_errors(runtime: Runtime) -> None:
    with pytest.raises(grpclib.GRPCError) as err:
        report(runtime, "c-pro", "f-sso", 1)  # not metered
    assert err.value.status == grpclib.Status.FAILED_PRECONDITION
    with pytest.raises(grpclib.GRPCError) as err:
        report(runtime, "c-pro", "f-nope", 1)
    assert err.value.status == grpclib.Status.NOT_FOUND
    with pytest.raises(grpclib.GRPCError) as err:
        report(runtime, "c-pro", "f-calls", float("nan"))
    assert err.value.status == grpclib.Status.INVALID_ARGUMENT
    with pytest.raises(grpclib.GRPCError) as err:
        report(runtime, "c-pro", "f-calls", 1, resource="team-unknown")
    assert err.value.status == grpclib.Status.NOT_FOUND
    with pytest.raises(grpclib.GRPCError) as err:
        report(runtime, "nobody", "f-calls", 1)
    assert err.value.status == grpclib.Status.NOT_FOUND
