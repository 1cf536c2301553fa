"""The hourly rollup against the real warehouse and control plane."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from dagster import AssetSelection

from assets.partitions import hour_key
from assets.resources import ControlPlaneResource
from assets.rollups.compute import latest_revision, read_rollup
from assets.rollups.defs import meters_for
from byoc_platform.control_plane.client import ControlPlaneRequestError
from tests.assets.conftest import checks, metadata, run
from tests.assets.usage_data import expected_rollup, fresh_hour, insert_events, make_events

pytestmark = pytest.mark.integration

ROLLUP = AssetSelection.assets("hourly_usage_rollup")


def _rollup_of(ch, env, hour):
    return {
        (r.environment, r.customer_id, r.resource_id, r.feature_id): r.value
        for r in read_rollup(ch, "byoc", hour)
        if r.environment == env
    }


def test_rollup_totals_match_the_events_sent(env, ch, config_file):
    hour = fresh_hour()
    events = make_events(hour, 600, seed=1)
    insert_events(ch, "byoc", env, events)
    insert_events(ch, "byoc", env, events[:80])  # a replayed batch: same dedup keys
    # Events just outside the hour belong to the neighbours.
    insert_events(ch, "byoc", env, make_events(hour + timedelta(hours=1), 30, seed=2))
    insert_events(ch, "byoc", env, make_events(hour - timedelta(hours=1), 30, seed=3))

    result = run(ROLLUP, hour_key(hour), config_file)

    assert result.success
    want = expected_rollup(env, events)
    got = _rollup_of(ch, env, hour)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert {k[3] for k in got} == {
        "feature-api-calls",
        "feature-tokens",
        "feature-peak-latency",
        "feature-models",
    }
    found = checks(result)
    assert found["rollup_reconciles_with_raw_events"].passed
    assert found["rollup_expectations"].passed
    meta = metadata(result, "hourly_usage_rollup")
    assert meta["rows"] >= len(want)
    assert env in meta["environments"]


def test_rematerializing_an_hour_replaces_it(env, ch, config_file):
    hour = fresh_hour()
    first = make_events(hour, 200, seed=4)
    insert_events(ch, "byoc", env, first)
    assert run(ROLLUP.without_checks(), hour_key(hour), config_file).success
    revision_one = latest_revision(ch, "byoc", hour)
    assert revision_one is not None

    later = make_events(hour, 50, seed=5)
    insert_events(ch, "byoc", env, later)
    assert run(ROLLUP.without_checks(), hour_key(hour), config_file).success

    revision_two = latest_revision(ch, "byoc", hour)
    assert revision_two is not None and revision_two.revision > revision_one.revision
    got = _rollup_of(ch, env, hour)
    want = expected_rollup(env, first + later)
    assert got == pytest.approx(want)
    # The superseded revision's rows are gone, not just hidden.
    stale = ch.command(
        "SELECT count() FROM byoc.usage_hourly WHERE hour = {h:DateTime('UTC')} "
        "AND revision = {r:UInt64}",
        parameters={"h": hour.strftime("%Y-%m-%d %H:%M:%S"), "r": revision_one.revision},
    )
    assert stale == 0


class _Refusing:
    """A catalog whose change feed refuses with ``status`` (a unit stand-in: the control
    plane's real answers for known environments are covered by the tests above)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __enter__(self) -> _Refusing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def iter_changes(self, environment: str, after: int = 0, limit: int = 0):
        raise ControlPlaneRequestError(self.status, "REFUSED", "refused")
        yield


@pytest.mark.parametrize("status", [401, 403, 408, 409, 429])
def test_a_refused_catalog_read_fails_the_rollup_instead_of_emptying_it(status, config_file):
    """An empty rollup of an environment publishes deltas that cancel its billed usage."""

    class Refusing(ControlPlaneResource):
        def catalog(self) -> Any:
            return _Refusing(status)

    with pytest.raises(ControlPlaneRequestError):
        meters_for(Refusing(config_file=config_file), ["some-environment"])


@pytest.mark.parametrize("status", [400, 404])
def test_an_environment_the_control_plane_does_not_know_has_no_meters(status, config_file):
    class Unknown(ControlPlaneResource):
        def catalog(self) -> Any:
            return _Refusing(status)

    assert meters_for(Unknown(config_file=config_file), ["gone"]) == {"gone": []}
