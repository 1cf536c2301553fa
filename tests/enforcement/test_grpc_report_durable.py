"""ReportUsage once its usages are durable in ``usage.reports``: answered, never an error that
invites the caller to send them again (the request has no idempotency key, so every instance's
consumer would count a retried DELTA twice), as REST /api/v2/usage answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

from byoc_platform.events import UsageReport
from tests.enforcement.harness import ControlPlaneProcess, Runtime, make_settings, running
from tests.enforcement.test_grpc_fastpath import SERVICE
from tests.enforcement.test_usage_reporting import new_customer


@pytest.fixture
def logged_runtime(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> Iterator[tuple[Runtime, list[UsageReport]]]:
    """A runtime of its own (its store is broken below) whose usage.reports is a recorder
    (this runtime has no broker)."""
    with running(make_settings(tmp_path, control_plane.url)) as runtime:
        runtime.sync_now()
        logged: list[UsageReport] = []

        async def sink(environment: str, reports: list[UsageReport]) -> None:
            logged.extend(reports)

        runtime.component.grpc_service.reports_sink = sink
        yield runtime, logged


def test_a_logged_report_is_answered_when_counting_it_here_fails(
    control_plane: ControlPlaneProcess, logged_runtime: tuple[Runtime, list[UsageReport]]
) -> None:
    runtime, logged = logged_runtime
    customer = new_customer(control_plane, runtime)
    # The local count fails after the log took the report (here: its claim cannot be written).
    with runtime.component.store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE enf_counted_events"))
    request = pb.ReportUsageRequest(customer_id=customer, feature_id="f-calls", value=3)
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        stub = channel.unary_unary(SERVICE + "ReportUsage")
        answer = pb.ReportUsageResponse().parse(stub(bytes(request), timeout=30))
    [report] = logged
    assert answer.measurement_id == report.id and report.value == 3
