"""The cluster instance's storage (deploy/dagster/dagster.yaml: runs, event logs and schedules in
PostgreSQL through dagster-postgres, a locked dependency) on a real PostgreSQL server: a run
materialised against that instance leaves its run and its events in the database, and the
publish asset's pool has one slot.

Only the connection is pointed at the throwaway server (host, port, user, database; trust auth,
no TLS there); module, class and every other key come from the deployed file unchanged. The
K8sRunLauncher is left out: it needs a cluster (its config is validated in
test_dagster_instance.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
import yaml
from dagster import DagsterInstance, asset, materialize

from assets.publish.defs import PUBLISH_POOL
from tests.deploy.deploy_manifests import DEPLOY
from tests.fixtures_postgres import fresh_database, postgres_server

SECTIONS = ("run_storage", "event_log_storage", "schedule_storage", "concurrency")


@pytest.fixture(scope="module")
def dagster_db() -> Iterator[str]:
    with postgres_server() as server:
        yield fresh_database(server)


def local_instance_yaml(db_url: str) -> dict:
    deployed = yaml.safe_load((DEPLOY / "dagster" / "dagster.yaml").read_text())
    url = urlparse(db_url.replace("postgresql+psycopg", "postgresql"))
    instance = {key: copy.deepcopy(deployed[key]) for key in SECTIONS}
    for section in (instance[key] for key in SECTIONS if key.endswith("storage")):
        section["config"]["postgres_db"].update(
            hostname=url.hostname, port=url.port, username=url.username,
            db_name=url.path.lstrip("/"), params={},
        )  # fmt: skip
    return instance


@asset
def probe() -> int:
    return 42


def test_runs_and_events_land_in_postgresql(
    dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(local_instance_yaml(dagster_db)))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = materialize([probe], instance=instance)
        assert result.success
        run_id = result.run_id
        # The publish asset's pool gets one slot in the cluster, as in the local instance.
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        info = instance.event_log_storage.get_concurrency_info(PUBLISH_POOL)
        assert info.limit == 1 and info.using_default_limit
    with psycopg.connect(dagster_db.replace("postgresql+psycopg", "postgresql")) as conn:
        runs = conn.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchall()
        events = conn.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,)
        ).fetchone()
    assert runs == [("SUCCESS",)]
    assert events is not None and events[0] > 0
