"""Invariants of the rendered overlays: probes, resources, zone spread, non-root and read-only
root filesystems on every Deployment; disruption budgets and autoscaling; secrets referenced,
never inlined; replication and zone layout of the data stores; settings that name real fields;
the topics, consumer groups and checkpoint volume the code expects."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from byoc_platform.settings import KafkaSettings, Settings
from streaming.processor.health import HealthServer
from streaming.processor.processor import checkpoint_path
from tests.deploy.deploy_manifests import (
    OVERLAYS,
    Obj,
    config_settings,
    container_env,
    named,
    of_kind,
    pod_specs,
    render,
    settings_from,
)

ZONE = "topology.kubernetes.io/zone"
SENSITIVE = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL|CREDENTIAL", re.I)


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _singleton(deployment: Obj) -> bool:
    """One pod that owns a ReadWriteOnce volume (Recreate): nothing to spread across zones."""
    spec = deployment["spec"]
    return spec.get("replicas") == 1 and spec["strategy"]["type"] == "Recreate"


def _only_container(deployment: Obj) -> Obj:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_probes_resources_spread_and_non_root(overlay: str) -> None:
    deployments = of_kind(render(overlay), "Deployment")
    assert deployments
    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        pod_sc = pod["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc.get("runAsUser", 0) != 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        spread = pod.get("topologySpreadConstraints", [])
        zone_rules = [c for c in spread if c["topologyKey"] == ZONE]
        if not _singleton(d):
            assert zone_rules, f"{name}: no zone spread constraint"
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert _selects(zone_rules[0]["labelSelector"], labels)
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            assert c["readinessProbe"] and c["livenessProbe"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runtime_api_probes_use_the_health_routes(overlay: str) -> None:
    c = named(render(overlay), "Deployment", "byoc-runtime-api")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}
    assert c["args"][:2] == ["serve", "--role"]
    assert c["args"][2] in ("ingest", "enforcement", "all")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_and_the_api_autoscales(overlay: str) -> None:
    objs = render(overlay)
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for d in of_kind(objs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(p["spec"]["selector"], labels) for p in pdbs), d["metadata"]["name"]
    hpa = named(objs, "HorizontalPodAutoscaler", "byoc-runtime-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "byoc-runtime-api"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_production_spreads_across_three_zones_and_dev_fits_one() -> None:
    prod = render("production")
    for d in of_kind(prod, "Deployment"):
        zone = d["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
        assert zone["whenUnsatisfiable"] == "DoNotSchedule"
    assert named(prod, "HorizontalPodAutoscaler", "byoc-runtime-api")["spec"]["minReplicas"] >= 3
    for d in of_kind(render("dev"), "Deployment"):
        if not _singleton(d):
            zone = d["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
            assert zone["whenUnsatisfiable"] == "ScheduleAnyway"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespace_has_a_default_deny_policy(overlay: str) -> None:
    objs = render(overlay)
    namespaces = {n["metadata"]["name"] for n in of_kind(objs, "Namespace")}
    namespaced = {o["metadata"].get("namespace") for o in objs} - {None}
    assert namespaces and namespaced <= namespaces
    for ns in namespaces:
        deny = [
            p
            for p in of_kind(objs, "NetworkPolicy")
            if p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"namespace {ns} has no default-deny NetworkPolicy"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(overlay: str) -> None:
    objs = render(overlay)
    assert not of_kind(objs, "Secret"), "Secrets must come from outside the manifests"
    config = named(objs, "ConfigMap", "byoc-config")["data"]
    assert not [k for k in config if SENSITIVE.search(k)]
    for owner, _, pod in pod_specs(objs):
        for c in pod["containers"]:
            for env in c.get("env", []):
                # *_FILE names hold a path to a mounted Secret, not the secret itself.
                if SENSITIVE.search(env["name"]) and not env["name"].endswith("_FILE"):
                    assert "value" not in env, f"{owner['metadata']['name']}: {env['name']} inline"
                    assert env["valueFrom"]["secretKeyRef"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_only_real_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every BYOC_* key parses into byoc_platform.settings.Settings (extra fields forbidden)."""
    config = named(render(overlay), "ConfigMap", "byoc-config")["data"]
    for key in [k for k in list(__import__("os").environ) if k.startswith("BYOC_")]:
        monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.deployment == "cluster"
    assert settings.host == "0.0.0.0"
    assert settings.s3.archive_bucket == config["BYOC_S3__ARCHIVE_BUCKET"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_point_at_the_rendered_services(overlay: str) -> None:
    objs = render(overlay)
    config = named(objs, "ConfigMap", "byoc-config")["data"]
    kafka = of_kind(objs, "Kafka")[0]["metadata"]["name"]
    assert config["BYOC_KAFKA__BOOTSTRAP"].startswith(f"{kafka}-kafka-bootstrap.byoc.svc:")
    chi = of_kind(objs, "ClickHouseInstallation")[0]["metadata"]["name"]
    assert config["BYOC_CLICKHOUSE__URL"] == f"http://clickhouse-{chi}.byoc.svc:8123"
    topics = {t["spec"]["topicName"]: t for t in of_kind(objs, "KafkaTopic")}
    expected = {
        config["BYOC_KAFKA__EVENTS_TOPIC"],
        config["BYOC_KAFKA__DEDUPED_TOPIC"],
        config["BYOC_KAFKA__REPORTS_TOPIC"],
    }
    if overlay == "production":  # the Flink job's output rows, read by ClickHouse
        prefix = config["BYOC_FLINK__SINK_TOPIC_PREFIX"]
        expected |= {prefix + t for t in ("usage_events", "usage_minute", "late_hours")}
    assert set(topics) == expected
    for t in topics.values():
        assert t["spec"]["partitions"] == int(config["BYOC_KAFKA__PARTITIONS"])
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == kafka
    keeper = of_kind(objs, "ClickHouseKeeperInstallation")[0]["metadata"]["name"]
    zk = of_kind(objs, "ClickHouseInstallation")[0]["spec"]["configuration"]["zookeeper"]
    assert zk["nodes"][0]["host"] == f"keeper-{keeper}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_topic_the_settings_name_is_a_rendered_kafka_topic(overlay: str) -> None:
    """Brokers do not create topics, so a topic the code uses needs its KafkaTopic (the runtime
    API's /readyz waits for events_topic and reports_topic: streaming/ingest/producer.py)."""
    objs = render(overlay)
    broker_config = of_kind(objs, "Kafka")[0]["spec"]["kafka"]["config"]
    assert broker_config["auto.create.topics.enable"] is False
    kafka = config_settings(objs).kafka
    wanted = {f: getattr(kafka, f) for f in KafkaSettings.model_fields if f.endswith("_topic")}
    assert {"events_topic", "deduped_topic", "reports_topic"} <= set(wanted)
    rendered = {t["spec"]["topicName"] for t in of_kind(objs, "KafkaTopic")}
    missing = {field: topic for field, topic in wanted.items() if topic not in rendered}
    assert not missing, f"no KafkaTopic for {missing}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_runtime_api_pod_reads_every_partition_with_its_own_consumer_group(
    overlay: str,
) -> None:
    """Each pod counts usage in its own store, so each must read every partition of the usage
    topics: a group shared by the replicas would give each ~1/N of the partitions. The group
    name is made unique with the pod's name through $(VAR) expansion, which Kubernetes applies
    to env values only (never to envFrom) and only from variables defined before."""
    objs = render(overlay)
    api = named(objs, "Deployment", "byoc-runtime-api")
    hpa = named(objs, "HorizontalPodAutoscaler", "byoc-runtime-api")
    container = _only_container(api)
    settings = settings_from(container_env(objs, container))
    assert settings.enforcement.consume_usage and container["args"][2] in ("all", "enforcement")
    most = max(api["spec"].get("replicas", 1), hpa["spec"]["maxReplicas"])
    if most == 1:
        return
    env = container["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), "a repeated env name hides the first"
    assert "BYOC_ENFORCEMENT__CONSUMER_GROUP" in names, (
        f"every pod joins {settings.enforcement.consumer_group!r}: Kafka splits the partitions"
    )
    at = names.index("BYOC_ENFORCEMENT__CONSUMER_GROUP")
    group = env[at]["value"]
    assert settings.enforcement.consumer_group == group  # env wins over the ConfigMap
    refs = re.findall(r"\$\((\w+)\)", group)
    assert refs, f"{group!r} is the same in every pod"
    pod_name_refs = [
        r
        for r in refs
        if r in names[:at]
        and env[names.index(r)].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        == "metadata.name"
    ]
    assert pod_name_refs, f"{group!r} does not use an earlier variable set from metadata.name"


def _stream_processor(objs: tuple[Obj, ...]) -> Obj:
    return named(objs, "Deployment", "byoc-stream-processor")


def test_embedded_stream_processor_is_one_pod_on_its_checkpoint_volume(tmp_path: Path) -> None:
    """The processor's checkpoints are one SQLite file that every partition owner must see;
    without it a pod replays usage.events from the beginning. So: one pod, replaced (not rolled)
    so the ReadWriteOnce volume is free, and the file on a PersistentVolumeClaim."""
    objs = render("dev")
    deployment = _stream_processor(objs)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    container = _only_container(deployment)
    # Where the processor keeps the file, relative to its data_dir (the code's own path).
    relative = checkpoint_path(settings_from({"BYOC_DATA_DIR": str(tmp_path)})).relative_to(
        tmp_path
    )
    data_dir = Path(container_env(objs, container)["BYOC_DATA_DIR"])
    checkpoint_file = data_dir / relative
    # The deepest mount holding the file is where it lives.
    mount = max(
        (m for m in container["volumeMounts"] if checkpoint_file.is_relative_to(m["mountPath"])),
        key=lambda m: len(Path(m["mountPath"]).parts),
    )
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert "persistentVolumeClaim" in volume, f"{checkpoint_file} is on {volume}"
    claim = named(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def _probe_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_embedded_stream_processor_probes_ask_its_health_server() -> None:
    """Each probe's path, served by the processor's real health server with a live but not yet
    ready processor: readiness must get the ready check's 503, liveness the health check's 200."""
    objs = render("dev")
    container = _only_container(_stream_processor(objs))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_from(container_env(objs, container))
    server = HealthServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        healthy=lambda: (True, {}),
        ready=lambda: (False, {"reason": "not joined"}),
    )
    server.start()
    try:
        for probe, expected in (
            ("startupProbe", 200),
            ("livenessProbe", 200),
            ("readinessProbe", 503),
        ):
            get = container[probe]["httpGet"]
            assert ports[get["port"]] == settings.ports.stream, probe
            assert _probe_status(server.port, get["path"]) == expected, (probe, get["path"])
    finally:
        server.stop()


def test_production_kafka_replicates_three_ways_with_two_in_sync() -> None:
    objs = render("production")
    pool = of_kind(objs, "KafkaNodePool")[0]
    assert pool["spec"]["replicas"] == 3
    kafka = of_kind(objs, "Kafka")[0]["spec"]["kafka"]
    assert kafka["rack"]["topologyKey"] == ZONE
    assert kafka["config"]["default.replication.factor"] == 3
    assert kafka["config"]["min.insync.replicas"] == 2
    assert kafka["config"]["unclean.leader.election.enable"] is False
    for t in of_kind(objs, "KafkaTopic"):
        assert t["spec"]["replicas"] == 3
        assert t["spec"]["config"]["min.insync.replicas"] == 2
        assert t["spec"]["config"]["message.timestamp.type"] == "LogAppendTime"


def test_dev_kafka_settings_fit_its_single_broker() -> None:
    objs = render("dev")
    brokers = of_kind(objs, "KafkaNodePool")[0]["spec"]["replicas"]
    for t in of_kind(objs, "KafkaTopic"):
        assert t["spec"]["replicas"] <= brokers
        assert t["spec"]["config"]["min.insync.replicas"] <= t["spec"]["replicas"]


def test_production_data_stores_span_zones() -> None:
    objs = render("production")
    chi = of_kind(objs, "ClickHouseInstallation")[0]["spec"]
    assert chi["configuration"]["clusters"][0]["layout"]["replicasCount"] == 3
    chk = of_kind(objs, "ClickHouseKeeperInstallation")[0]["spec"]
    assert chk["configuration"]["clusters"][0]["layout"]["replicasCount"] == 3
    for spec in (chi, chk):
        pod = spec["templates"]["podTemplates"][0]["spec"]
        assert pod["topologySpreadConstraints"][0]["topologyKey"] == ZONE
        assert pod["securityContext"]["runAsNonRoot"] is True
    ledger = named(objs, "Cluster", "byoc-ledger")["spec"]
    assert ledger["instances"] == 3
    assert ledger["affinity"]["topologyKey"] == ZONE
    assert ledger["affinity"]["podAntiAffinityType"] == "required"
    # A ledger commit is acknowledged only once a standby in another zone has it.
    assert ledger["postgresql"]["synchronous"] == {"method": "any", "number": 1}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_use_their_own_service_accounts(overlay: str) -> None:
    objs = render(overlay)
    accounts = {s["metadata"]["name"]: s for s in of_kind(objs, "ServiceAccount")}
    for owner, _, pod in pod_specs(objs):
        sa = pod.get("serviceAccountName") or owner["spec"].get("serviceAccount")
        assert sa in accounts, f"{owner['metadata']['name']} uses unknown ServiceAccount {sa}"
        assert sa != "default"
    # Cloud access only through workload identity, with a role per ServiceAccount.
    roles = {
        name: sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn")
        for name, sa in accounts.items()
    }
    assert roles["byoc-runtime-api"] is None
    assert roles["byoc-dagster-run"] and roles["byoc-archive-reader"]
    assert len({r for r in roles.values() if r}) == len([r for r in roles.values() if r])
