"""The warehouse schema in a cluster: the migration Job, the settings it runs with, and the Kafka
ingestion of the Flink job's rows and of the usage reports agree with the rendered ClickHouse,
Kafka and Flink objects.

The statements themselves are tested in tests/byoc_platform/test_warehouse_cluster.py and, end
to end on the job's rows, in tests/streaming/flink/test_clickhouse_ingest.py; here the
deployment must run them against the right cluster, topics and settings."""

from __future__ import annotations

import os

import pytest

from byoc_platform.settings import Settings
from byoc_platform.warehouse_cluster import (
    HOT_TABLES,
    REPLICA_NAME,
    REPLICA_PATH,
    REPORTS_TABLE,
    ROW_TABLES,
    migrations_for,
    queue_table,
)
from tests.deploy.deploy_manifests import OVERLAYS, Obj, named, of_kind, render

JOB = "byoc-warehouse-migrate"


def _settings(objs: tuple[Obj, ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the Job's pod sees them: the ConfigMap's keys (envFrom) and nothing else."""
    for key in [k for k in os.environ if k.startswith("BYOC_")]:
        monkeypatch.delenv(key)
    for key, value in named(objs, "ConfigMap", "byoc-config")["data"].items():
        monkeypatch.setenv(key, value)
    return Settings()


def _chi(objs: tuple[Obj, ...]) -> Obj:
    return of_kind(objs, "ClickHouseInstallation")[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_job_runs_the_migrations_with_the_runtime_image_and_settings(overlay: str) -> None:
    objs = render(overlay)
    job = named(objs, "Job", JOB)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    api = named(objs, "Deployment", "byoc-runtime-api")["spec"]["template"]["spec"]
    assert container["image"] == api["containers"][0]["image"]  # the image with `byoc`
    assert container["args"][:2] == ["warehouse", "migrate"]
    assert float(container["args"][container["args"].index("--wait-s") + 1]) >= 60
    assert container["envFrom"] == [{"configMapRef": {"name": "byoc-config"}}]
    (password,) = [e for e in container["env"] if e["name"] == "BYOC_CLICKHOUSE__PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "byoc-clickhouse", "key": "password"}
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["byoc-platform.io/clickhouse-client"] == "true"
    # re-runnable: a failed attempt retries, a finished Job goes away so the next apply reruns
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600
    # hardened like every Deployment
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_name_the_installations_cluster_and_its_replica_macros(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = render(overlay)
    settings = _settings(objs, monkeypatch)
    chi = _chi(objs)["spec"]["configuration"]
    assert settings.clickhouse.cluster == chi["clusters"][0]["name"]
    # the explicit replica path/name of the migrations = the installation's defaults
    assert chi["settings"]["default_replica_path"] == REPLICA_PATH
    assert chi["settings"]["default_replica_name"] == REPLICA_NAME
    statements = migrations_for(settings)
    replicated = [s for s in statements if "ENGINE = Replicated" in s]
    assert len(replicated) >= len(HOT_TABLES)
    assert all(f" ON CLUSTER {settings.clickhouse.cluster}" in s for s in statements)


def test_production_ingests_the_flink_rows_from_the_rendered_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objs = render("production")
    settings = _settings(objs, monkeypatch)
    assert settings.stream.engine == "flink"
    statements = migrations_for(settings)
    ddl = "".join(statements)
    assert ddl.count("ENGINE = Kafka") == len(ROW_TABLES) + 1  # + the usage reports' queue
    assert f"kafka_broker_list = '{settings.kafka.bootstrap}'" in ddl
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind(objs, "KafkaTopic")}
    for table in ROW_TABLES:
        topic = settings.flink.sink_topic_prefix + table
        assert f"kafka_topic_list = '{topic}'" in ddl
        assert (
            topics[topic]["replicas"] == 3 and topics[topic]["config"]["min.insync.replicas"] == 2
        )
    # The reports' queue reads the topic the runtime API writes (the same ConfigMap), which
    # the base deploys; it keeps reports 35 days, so a new consumer group loads them all.
    (reports_queue,) = [s for s in statements if f".{queue_table(REPORTS_TABLE)} ON" in s]
    reports = settings.kafka.reports_topic
    assert f"kafka_topic_list = '{reports}'" in reports_queue
    assert (
        topics[reports]["replicas"] == 3 and topics[reports]["config"]["min.insync.replicas"] == 2
    )
    # The Flink pods read the same ConfigMap, so the job writes where ClickHouse reads.
    flink = of_kind(objs, "FlinkDeployment")[0]["spec"]["podTemplate"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "byoc-config"}} in flink["envFrom"]
    # Committed transactions only, and a new consumer group starts at the oldest row.
    chi_settings = _chi(objs)["spec"]["configuration"]["settings"]
    assert chi_settings["kafka/isolation_level"] == "read_committed"
    assert chi_settings["kafka/auto_offset_reset"] == "earliest"


def test_dev_writes_the_tables_from_the_embedded_processor_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objs = render("dev")
    settings = _settings(objs, monkeypatch)
    assert settings.stream.engine == "embedded"
    statements = migrations_for(settings)
    assert not [s for s in statements if "Kafka" in s]
    # usage_reports exists there too (the embedded processor fills it; the rollup reads it)
    assert len([s for s in statements if "ENGINE = Replicated" in s]) == len(HOT_TABLES)
    assert not of_kind(objs, "FlinkDeployment")
    assert not [t for t in of_kind(objs, "KafkaTopic") if "rows" in t["spec"]["topicName"]]
