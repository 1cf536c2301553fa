"""Control plane down: checks keep answering from local state (marked fallback on gRPC); the
global fallback covers unknown customers; changes made while it was down arrive after it
returns; the local state and the sync cursor survive a runtime restart."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from stigg._client import Stigg as RestStigg
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from tests.enforcement.harness import (
    ControlPlaneProcess,
    Runtime,
    make_settings,
    running,
    wait_until,
)
from tests.enforcement.test_sidecar_checks import call

OFFLINE_CHANGES = textwrap.dedent(
    """
    environments:
      development:
        customers:
          - {id: c-late, name: Created while the runtime could not sync}
        subscriptions:
          - {id: s-late, customerId: c-late, planId: plan-pro, startDate: "2025-01-01T00:00:00Z"}
          - {id: s-basic, customerId: c-basic, planId: plan-pro, startDate: "2025-01-01T00:00:00Z"}
    """
)


def sso(runtime: Runtime, customer: str) -> pb.GetBooleanEntitlementResponse:
    return call(
        runtime,
        lambda s: s.get_boolean_entitlement(
            pb.GetBooleanEntitlementRequest(customer_id=customer, feature_id="f-sso")
        ),
    )


def sync_failed(runtime: Runtime) -> bool:
    status = runtime.component.sync.syncs["development"].status
    return status.last_error is not None


@pytest.fixture
def cp(tmp_path: Path) -> ControlPlaneProcess:
    process = ControlPlaneProcess(tmp_path / "cp")
    process.start()
    yield process
    process.stop()


def test_outage_fallback_and_catch_up(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "rt",
        cp.url,
        stale_after_s=30,
        fallback_entitlements={"f-sso": {"hasAccess": True}},
        sync_timeout_s=1,
    )
    with running(settings) as runtime:
        runtime.sync_now()
        fresh = sso(runtime, "c-pro")
        assert (fresh.has_access, fresh.is_fallback) == (True, False)
        assert sso(runtime, "c-basic").has_access is False  # plan-basic has no SSO

        cp.stop()
        wait_until(lambda: sync_failed(runtime), timeout=20)
        during = sso(runtime, "c-pro")
        assert during.has_access is True
        assert during.is_fallback is True  # answered from local state the sync cannot refresh
        denied = sso(runtime, "c-basic")
        assert (denied.has_access, denied.is_fallback) == (False, True)
        # Unknown customer while down: the configured global fallback answers.
        unknown = sso(runtime, "c-late")
        assert (unknown.has_access, unknown.is_fallback) == (True, True)
        # REST keeps answering from local state too (its contract has no fallback flag).
        rest = RestStigg(base_url=runtime.api_url, api_key=runtime.api_key, max_retries=0)
        assert rest.v1.customers.check_entitlement("c-pro", feature_id="f-sso").data.is_granted

        # Changes made at the control plane while the runtime could not reach it.
        changes = tmp_path / "offline.yaml"
        changes.write_text(OFFLINE_CHANGES)
        cp.apply_offline(changes)
        cp.start()

        wait_until(lambda: not sync_failed(runtime), timeout=20)
        late = sso(runtime, "c-late")
        assert (late.has_access, late.is_fallback) == (True, False)
        upgraded = sso(runtime, "c-basic")  # s-basic moved to plan-pro while down
        assert (upgraded.has_access, upgraded.is_fallback) == (True, False)


def test_state_and_cursor_survive_a_restart_without_control_plane(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "rt", cp.url, stale_after_s=30, sync_timeout_s=1)
    with running(settings) as runtime:
        runtime.sync_now()
        cursor = runtime.component.sync.syncs["development"].status.cursor
        assert cursor > 0
    cp.stop()
    restarted_settings = make_settings(tmp_path / "rt", cp.url, stale_after_s=30, sync_timeout_s=1)
    with running(restarted_settings) as runtime:
        status = runtime.component.sync.syncs["development"].status
        assert status.cursor == cursor  # resumed, not restarted from the snapshot
        answer = sso(runtime, "c-pro")  # nothing synced in this process: all from the store
        assert (answer.has_access, answer.is_fallback) == (True, True)
        assert sso(runtime, "c-basic").has_access is False
        changes = tmp_path / "offline.yaml"
        changes.write_text(OFFLINE_CHANGES)
        cp.apply_offline(changes)
        cp.start()
        wait_until(lambda: sso(runtime, "c-late").has_access, timeout=20)
        assert status.cursor > cursor
        assert sso(runtime, "c-pro").is_fallback is False
