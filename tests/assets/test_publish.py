"""Publishing rollups to the control plane (the local stand-in, through Stigg's GraphQL client)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
from dagster import AssetSelection

from assets.partitions import hour_key
from assets.publish.ledger import plan, read_ledger, record
from assets.publish.sender import send
from assets.resources import ControlPlaneResource
from byoc_platform.control_plane.client import ControlPlaneClient
from tests.assets.conftest import checks, materialized, metadata, run
from tests.assets.usage_data import (
    Event,
    expected_rollup,
    fresh_hour,
    insert_events,
    make_events,
    settings_file,
)

pytestmark = pytest.mark.integration

ROLLUP_AND_PUBLISH = AssetSelection.assets("hourly_usage_rollup", "published_usage")
PUBLISH_ONLY = AssetSelection.assets("published_usage")
ADDITIVE = {"feature-api-calls", "feature-tokens"}


@pytest.fixture(scope="module")
def small_bulks(infra, tmp_path_factory) -> str:
    """Settings with bulks of 5 usages, so an hour needs several ReportUsageBulk calls."""
    return settings_file(
        tmp_path_factory.mktemp("publish"), infra.settings, control_plane={"publish_bulk_size": 5}
    )


def control_plane_totals(settings, env) -> dict[tuple[str, str, str], float]:
    with ControlPlaneClient.from_settings(settings) as cp:
        return {
            (t.customerId, t.resourceId or "", t.featureId): t.value for t in cp.usage_totals(env)
        }


def control_plane_records(settings, env) -> list:
    with ControlPlaneClient.from_settings(settings) as cp:
        return cp.usage_records(env)


def additive(env, events) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for (_env, customer, resource, feature), value in expected_rollup(env, events).items():
        if feature in ADDITIVE:
            out[(customer, resource, feature)] += value
    return dict(out)


def test_publishing_twice_leaves_the_control_plane_totals_unchanged(infra, env, ch, small_bulks):
    hour = fresh_hour()
    events = make_events(hour, 400, seed=11)
    insert_events(ch, "byoc", env, events)

    first = run(ROLLUP_AND_PUBLISH, hour_key(hour), small_bulks)

    assert first.success
    want = additive(env, events)
    assert control_plane_totals(infra.settings, env) == pytest.approx(want)
    meta = metadata(first, "published_usage")
    assert meta["usages_sent"] == len(want)
    assert meta["bulks"] == -(-len(want) // 5)  # bulks of <= 5, one environment
    assert meta["published_total"] == pytest.approx(sum(want.values()))
    records = control_plane_records(infra.settings, env)
    assert len(records) == len(want)
    assert all(r.idempotencyKey.endswith(":r0") for r in records)
    assert {r.createdAt[:13] for r in records} == {hour.strftime("%Y-%m-%dT%H")}

    # A re-run of the publish, and a backfill of the hour (rollup + publish), change nothing.
    again = run(PUBLISH_ONLY, hour_key(hour), small_bulks)
    backfill = run(ROLLUP_AND_PUBLISH, hour_key(hour), small_bulks)

    assert again.success and backfill.success
    assert metadata(again, "published_usage")["usages_sent"] == 0
    assert metadata(backfill, "published_usage")["usages_sent"] == 0
    assert control_plane_totals(infra.settings, env) == pytest.approx(want)
    assert len(control_plane_records(infra.settings, env)) == len(want)


def test_late_events_publish_exactly_the_difference(infra, env, ch, config_file):
    hour = fresh_hour()
    on_time = make_events(hour, 300, seed=12)
    insert_events(ch, "byoc", env, on_time)
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    before = control_plane_records(infra.settings, env)

    late = make_events(hour, 40, seed=13)  # same hour, new idempotency keys
    insert_events(ch, "byoc", env, late)
    result = run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file)

    assert result.success
    want = additive(env, on_time + late)
    assert control_plane_totals(infra.settings, env) == pytest.approx(want)
    after = control_plane_records(infra.settings, env)
    new_keys = {r.idempotencyKey for r in after} - {r.idempotencyKey for r in before}
    assert new_keys and all(k.endswith(":r1") for k in new_keys)
    meta = metadata(result, "published_usage")
    assert meta["usages_sent"] == len(new_keys) == len(after) - len(before)
    # Keys the late events did not touch were not re-sent.
    assert meta["unchanged_keys"] == len(want) - len(new_keys)


def test_a_failing_reconciliation_blocks_publish(infra, env, ch, config_file):
    hour = fresh_hour()
    insert_events(ch, "byoc", env, make_events(hour, 200, seed=14))
    assert run(AssetSelection.assets("hourly_usage_rollup"), hour_key(hour), config_file).success
    # Events land after the rollup: it no longer equals the raw events (a stale rollup).
    insert_events(ch, "byoc", env, make_events(hour, 20, seed=15))

    gated = run(
        PUBLISH_ONLY | AssetSelection.checks_for_assets("hourly_usage_rollup"),
        hour_key(hour),
        config_file,
    )

    assert not gated.success
    check = checks(gated)["rollup_reconciles_with_raw_events"]
    assert not check.passed
    assert check.metadata["mismatches"].value
    assert "published_usage" not in materialized(gated)
    started = {e.step_key for e in gated.all_events if e.event_type_value == "STEP_START"}
    assert "published_usage" not in started  # blocked by the check, not by its own guard
    # A run of the publish alone is refused by the same reconciliation.
    alone = run(PUBLISH_ONLY, hour_key(hour), config_file)
    assert not alone.success
    assert "do not reconcile" in str(
        [e.event_specific_data for e in alone.all_events if e.is_step_failure]
    )
    assert control_plane_totals(infra.settings, env) == {}
    assert [e for e in read_ledger(ch, "byoc", hour) if e.environment == env] == []


def test_publish_after_a_crash_resends_pending_keys_without_double_counting(
    infra, env, ch, config_file
):
    hour = fresh_hour()
    events = make_events(hour, 200, seed=16)
    insert_events(ch, "byoc", env, events)
    assert run(AssetSelection.assets("hourly_usage_rollup"), hour_key(hour), config_file).success
    # A publish that crashed after the control plane accepted half of its usages but before
    # the ledger marked them sent: all of its revisions are still "pending".
    from assets.rollups.compute import read_rollup

    rows = read_rollup(ch, "byoc", hour)
    targets = {r.key: r.value for r in rows if r.feature_id in ADDITIVE}
    todo = plan(hour, targets, read_ledger(ch, "byoc", hour))
    record(ch, "byoc", todo.new, "pending")
    half = [e for e in todo.new if e.environment == env][: len(todo.new) // 2]
    with ControlPlaneResource(config_file=config_file).graphql() as graphql:
        assert len(send(graphql, half, 100, on_sent=lambda bulk: None).sent) == len(half)

    result = run(PUBLISH_ONLY, hour_key(hour), config_file)

    assert result.success
    meta = metadata(result, "published_usage")
    assert meta["new_revisions"] == 0 and meta["resent_pending"] >= len(half)
    assert control_plane_totals(infra.settings, env) == pytest.approx(additive(env, events))
    assert all(e.status == "sent" for e in read_ledger(ch, "byoc", hour))


def test_usage_the_control_plane_refuses_stays_pending_and_the_rest_is_published(
    infra, env, ch, small_bulks
):
    hour = fresh_hour()
    known = make_events(hour, 100, seed=17)
    stranger = make_events(hour + timedelta(minutes=1), 10, seed=18, customers=["cust-unknown"])
    insert_events(ch, "byoc", env, known + stranger)

    result = run(ROLLUP_AND_PUBLISH, hour_key(hour), small_bulks)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "refused" in str(failure.event_specific_data)
    assert control_plane_totals(infra.settings, env) == pytest.approx(additive(env, known))
    pending = [e for e in read_ledger(ch, "byoc", hour) if e.status != "sent"]
    assert pending and {e.customer_id for e in pending} == {"cust-unknown"}


def test_deleting_a_feature_does_not_cancel_the_usage_billed_under_it(infra, env, ch, small_bulks):
    """A re-rollup used the catalog of the day: a deleted feature rolled up to nothing and its
    billed usage was to be cancelled (refused by the control plane, which blocked the hour)."""
    hour = fresh_hour()
    events = make_events(hour, 60, seed=21)
    insert_events(ch, "byoc", env, events)
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), small_bulks).success
    billed = control_plane_totals(infra.settings, env)
    assert any(feature == "feature-tokens" for _, _, feature in billed)
    with ControlPlaneClient.from_settings(infra.settings) as cp:
        assert cp.delete_entity(env, "feature", "feature-tokens") is not None
    calls = (events[0].customer_id, events[0].resource_id, "feature-api-calls")
    late_key = "late-after-delete"
    assert_a_late_call_bills_only_itself(infra, env, ch, small_bulks, hour, billed, calls, late_key)


def assert_a_late_call_bills_only_itself(infra, env, ch, small_bulks, hour, billed, calls, key):
    """One late `api_call` (idempotency ``key``) of ``calls`` (customer, resource, feature)
    re-rolled up and published: that key's billed usage grows by one, the others' stay."""
    customer, resource, _ = calls
    at = hour + timedelta(minutes=59)
    late = Event(customer, "api_call", key, at, resource_id=resource)
    insert_events(ch, "byoc", env, [late])

    result = run(ROLLUP_AND_PUBLISH, hour_key(hour), small_bulks)

    assert result.success
    after = control_plane_totals(infra.settings, env)
    assert after[calls] == pytest.approx(billed[calls] + 1)  # the hour's meter: api_call
    assert {k: v for k, v in after.items() if k != calls} == pytest.approx(
        {k: v for k, v in billed.items() if k != calls}
    )


class _FlakyControlPlane:
    """A loopback proxy before the control-plane stand-in that answers its first ``failures``
    requests with a GraphQL error of the control plane's own (HTTP 200 + errors[], code
    INTERNAL_SERVER_ERROR), then forwards; ``failures=-1`` answers every request so."""

    ERROR = {"errors": [{"message": "boom", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}

    def __init__(self, upstream: str, failures: int) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        proxy = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.requests += 1
                if failures < 0 or proxy.requests <= failures:
                    status, reply = 200, json.dumps(proxy.ERROR).encode()
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    answer = httpx.post(upstream, content=body, headers=headers)
                    status, reply = answer.status_code, answer.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/graphql"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pending_entries(ch, env, hour, config_file):
    """The hour rolled up and its revisions recorded pending (a publish about to send)."""
    from assets.rollups.compute import read_rollup

    assert run(AssetSelection.assets("hourly_usage_rollup"), hour_key(hour), config_file).success
    rows = read_rollup(ch, "byoc", hour)
    targets = {r.key: r.value for r in rows if r.feature_id in ADDITIVE}
    todo = plan(hour, targets, read_ledger(ch, "byoc", hour))
    record(ch, "byoc", todo.new, "pending")
    return [e for e in todo.new if e.environment == env]


def test_a_transient_graphql_error_is_retried_not_taken_as_a_refusal(infra, env, ch, config_file):
    """F67: HTTP 200 + errors[] with INTERNAL_SERVER_ERROR split every bulk into single sends
    and reported the usages as refused (no step retry), as if the customer were unknown."""
    from stigg.client import Stigg
    from stigg.generated.exceptions import GraphQLClientGraphQLMultiError

    hour = fresh_hour()
    events = make_events(hour, 120, seed=41)
    insert_events(ch, "byoc", env, events)
    entries = _pending_entries(ch, env, hour, config_file)
    cp = infra.settings.control_plane
    flaky = _FlakyControlPlane(str(cp.api_url), failures=2)
    try:
        graphql = Stigg.create_client(cp.api_key, api_url=flaky.url, enable_edge=False)
        result = send(graphql, entries, 100, on_sent=lambda bulk: None, max_wait_s=0.01)
    finally:
        flaky.close()

    assert result.rejected == []
    assert len(result.sent) == len(entries)
    assert flaky.requests == 2 + result.bulks  # two failed attempts, then the bulks whole
    assert control_plane_totals(infra.settings, env) == pytest.approx(additive(env, events))

    # An incident longer than the retries fails the send (the step is retried), after
    # `attempts` requests of the first bulk: nothing split, nothing reported as refused.
    down = _FlakyControlPlane(str(cp.api_url), failures=-1)
    try:
        graphql = Stigg.create_client(cp.api_key, api_url=down.url, enable_edge=False)
        with pytest.raises(GraphQLClientGraphQLMultiError, match="boom"):
            send(graphql, entries, 100, on_sent=lambda bulk: None, attempts=3, max_wait_s=0.01)
    finally:
        down.close()
    assert down.requests == 3


def test_editing_a_meter_does_not_rewrite_the_usage_billed_under_it(infra, env, ch, small_bulks):
    """F68: a re-rollup recomputed the hour's features with their current meters: after a
    meter's event name was edited, the hour's billed usage of the feature was cancelled."""
    from byoc_platform.catalog import Feature, Meter

    hour = fresh_hour()
    events = make_events(hour, 60, seed=22)
    insert_events(ch, "byoc", env, events)
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), small_bulks).success
    billed = control_plane_totals(infra.settings, env)
    with ControlPlaneClient.from_settings(infra.settings) as cp:
        edited = Meter(eventName="api_request", aggregation="COUNT")  # from now on
        cp.put_entity(
            env,
            Feature(
                id="feature-api-calls",
                featureType="NUMBER",
                meterType="Incremental",
                meter=edited,
            ),
        )
    calls = next(k for k in sorted(billed) if k[2] == "feature-api-calls")
    late_key = "late-before-edit"
    assert_a_late_call_bills_only_itself(infra, env, ch, small_bulks, hour, billed, calls, late_key)


def test_publishing_a_revision_replaced_meanwhile_sends_nothing(infra, env, ch, config_file):
    """F69: a multi-hour publish read a revision that a concurrent rollup had replaced and
    deleted; its empty rows made every key's target 0 and cancelled the hour's billed usage."""
    from assets.publish.defs import StaleRollup, publish_hour
    from assets.rollups.compute import latest_revision

    hour = fresh_hour()
    insert_events(ch, "byoc", env, make_events(hour, 80, seed=23))
    assert run(ROLLUP_AND_PUBLISH, hour_key(hour), config_file).success
    checked = latest_revision(ch, "byoc", hour)  # what the publish checked, then ...
    assert checked is not None
    billed = control_plane_totals(infra.settings, env)
    ledger = read_ledger(ch, "byoc", hour)
    # ... a concurrent rollup of the hour replaced it (and deleted its rows).
    assert run(AssetSelection.assets("hourly_usage_rollup"), hour_key(hour), config_file).success

    stale = pytest.raises(StaleRollup, match=f"revision {checked.revision} was replaced")
    with ControlPlaneResource(config_file=config_file).graphql() as graphql, stale:
        publish_hour(ch, "byoc", graphql, hour, checked.revision, 100)

    assert control_plane_totals(infra.settings, env) == pytest.approx(billed)
    assert read_ledger(ch, "byoc", hour) == ledger
