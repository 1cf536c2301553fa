"""The cluster's Dagster instance: rebuilt from the Helm values the way the chart's instance
ConfigMap template does, equal to deploy/dagster/dagster.yaml, and valid under dagster's
instance schema and dagster-k8s's own K8sRunLauncher config schema. Then a run Job is built
from that config with dagster-k8s (no cluster) and checked as a Kubernetes object."""

from __future__ import annotations

import copy
import types
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config_schema
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job

from tests.deploy.deploy_manifests import DEPLOY, named, render

VALUES = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
INSTANCE = yaml.safe_load((DEPLOY / "dagster" / "dagster.yaml").read_text())

# Keys of the chart's values models (helm/dagster/schema/schema/charts/dagster/values.py and
# subschema/run_launcher.py, dagster_user_deployments/subschema/user_deployments.py; the chart
# validates values.yaml against the JSON schema generated from them).
CHART_TOP_LEVEL = {
    "dagsterWebserver",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "imagePullSecrets",
    "computeLogManager",
    "scheduler",
    "runLauncher",
    "pythonLogs",
    "dagsterDaemon",
    "busybox",
    "migrate",
    "telemetry",
    "serviceAccount",
    "global",
    "retention",
    "additionalInstanceConfig",
    "rbacEnabled",
    "nameOverride",
    "fullnameOverride",
    "concurrency",
}
K8S_RUN_LAUNCHER_KEYS = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
RUN_K8S_CONFIG_KEYS = {
    "containerConfig",
    "podSpecConfig",
    "podTemplateSpecMetadata",
    "jobSpecConfig",
    "jobMetadata",
}
USER_DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "port",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
}
POSTGRES_KEYS = {
    "image",
    "enabled",
    "postgresqlHost",
    "postgresqlUsername",
    "postgresqlPassword",
    "postgresqlDatabase",
    "postgresqlParams",
    "postgresqlScheme",
    "service",
}
RELEASE = "dagster"  # deploy/README.md, "Install order"
INSTANCE_CONFIG_MAP = "dagster-instance"  # the chart's name for a release called "dagster"
PIPELINE_ENV_CONFIG_MAP = "dagster-pipeline-env"


def _storage(module: str, cls: str, pg: dict[str, Any]) -> dict[str, Any]:
    return {
        "module": module,
        "class": cls,
        "config": {
            "postgres_db": {
                "username": pg["postgresqlUsername"],
                "password": {"env": "DAGSTER_PG_PASSWORD"},
                "hostname": pg["postgresqlHost"],
                "db_name": pg["postgresqlDatabase"],
                "port": pg["service"]["port"],
                "params": pg["postgresqlParams"],
                "scheme": pg["postgresqlScheme"],
            }
        },
    }


def build_instance(values: dict[str, Any]) -> dict[str, Any]:
    """What the chart's configmap-instance.yaml renders from these values (the parts we set)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    rk = k8s["runK8sConfig"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    pg = values["postgresql"]
    daemon = values["dagsterDaemon"]
    sensor_days = values["retention"]["sensor"]["purgeAfterDays"]
    return {
        "scheduler": {"module": "dagster._core.scheduler", "class": values["scheduler"]["type"]},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": daemon["runCoordinator"]["type"],
            "config": {
                "max_concurrent_runs": queued["maxConcurrentRuns"],
            },
        },
        "run_launcher": {
            "module": "dagster_k8s",
            "class": values["runLauncher"]["type"],
            "config": {
                "load_incluster_config": k8s["loadInclusterConfig"],
                "job_namespace": k8s["jobNamespace"],
                "image_pull_policy": k8s["imagePullPolicy"],
                "instance_config_map": INSTANCE_CONFIG_MAP,
                "postgres_password_secret": values["global"]["postgresqlSecretName"],
                "dagster_home": "/opt/dagster/dagster_home",
                "env_config_maps": [PIPELINE_ENV_CONFIG_MAP]
                + [c["name"] for c in k8s["envConfigMaps"]],
                "env_secrets": [s["name"] for s in k8s["envSecrets"]],
                "env_vars": k8s["envVars"],
                "labels": k8s["labels"],
                "fail_pod_on_run_failure": k8s["failPodOnRunFailure"],
                "resources": k8s["resources"],
                "run_k8s_config": {
                    "container_config": rk["containerConfig"],
                    "pod_spec_config": rk["podSpecConfig"],
                    "job_spec_config": rk["jobSpecConfig"],
                },
            },
        },
        "run_storage": _storage("dagster_postgres.run_storage", "PostgresRunStorage", pg),
        "event_log_storage": _storage("dagster_postgres.event_log", "PostgresEventLogStorage", pg),
        "schedule_storage": _storage(
            "dagster_postgres.schedule_storage", "PostgresScheduleStorage", pg
        ),
        "run_monitoring": {
            "enabled": daemon["runMonitoring"]["enabled"],
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
            "max_resume_run_attempts": daemon["runMonitoring"]["maxResumeRunAttempts"],
        },
        "run_retries": {
            "enabled": daemon["runRetries"]["enabled"],
            "max_retries": daemon["runRetries"]["maxRetries"],
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "concurrency": {"pools": {"default_limit": values["concurrency"]["pools"]["defaultLimit"]}},
        "retention": {
            "schedule": {"purge_after_days": values["retention"]["schedule"]["purgeAfterDays"]},
            "sensor": {"purge_after_days": dict(sensor_days)},
        },
    }


def _processed_launcher_config(config: dict[str, Any]) -> dict[str, Any]:
    result = process_config(K8sRunLauncher.config_type(), config)
    assert result.success, [e.message for e in result.errors or []]
    return result.value


def test_instance_yaml_is_what_the_chart_renders_from_the_values() -> None:
    assert build_instance(VALUES) == INSTANCE


def test_instance_yaml_validates_against_dagsters_instance_schema() -> None:
    result = process_config(dagster_instance_config_schema(), INSTANCE)
    assert result.success, [e.message for e in result.errors or []]
    assert INSTANCE["run_launcher"]["class"] == "K8sRunLauncher"
    assert INSTANCE["run_launcher"]["module"] == "dagster_k8s"


def test_run_launcher_config_validates_against_dagster_k8s_schema() -> None:
    value = _processed_launcher_config(INSTANCE["run_launcher"]["config"])
    assert value["job_namespace"] == "byoc"
    assert value["load_incluster_config"] is True
    assert value["run_k8s_config"]["pod_spec_config"]["serviceAccountName"] == "byoc-dagster-run"


def test_run_launcher_schema_rejects_a_wrong_config() -> None:
    """The schema check is real: a misspelt key and a missing required key both fail."""
    typo = copy.deepcopy(INSTANCE["run_launcher"]["config"])
    typo["job_namspace"] = typo.pop("job_namespace")
    assert not process_config(K8sRunLauncher.config_type(), typo).success
    missing = copy.deepcopy(INSTANCE["run_launcher"]["config"])
    del missing["instance_config_map"]
    assert not process_config(K8sRunLauncher.config_type(), missing).success


def code_location_container_context(values: dict[str, Any]) -> dict[str, Any] | None:
    """The container context the chart gives the code location's gRPC server, which stamps it on
    every run it launches: the user-deployments subchart's helpers/_helpers.tpl
    `dagsterUserDeployments.k8sContainerContext` (the parts our values set), or None when
    includeConfigInLaunchedRuns is off (deployment-user.yaml; on is the chart's default)."""
    (location,) = values["dagster-user-deployments"]["deployments"]
    if not location.get("includeConfigInLaunchedRuns", {"enabled": True})["enabled"]:
        return None
    k8s: dict[str, Any] = {
        "image_pull_policy": location["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-dagster-user-deployments-{location['name']}-user-env"]
        + [c["name"] for c in location.get("envConfigMaps", [])],
        "namespace": "byoc",
        "service_account_name": values["global"]["serviceAccountName"],
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if location.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in location["envSecrets"]]
    for key, field in (
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
    ):
        if location.get(key):
            k8s[field] = location[key]
    return {"k8s": k8s}


def build_run_job(container_context: dict[str, Any] | None) -> dict[str, Any]:
    """The Job K8sRunLauncher.launch_run creates for a run whose code origin carries this
    container context: dagster-k8s's own merge (K8sContainerContext.create_for_run), job config
    and job construction, with the launcher's processed config from dagster.yaml."""
    config = _processed_launcher_config(INSTANCE["run_launcher"]["config"])
    # K8sRunLauncher keeps its config fields as attributes (unset ones None).
    launcher: Any = types.SimpleNamespace(
        **{f: config.get(f) for f in K8sRunLauncher.config_type()}
    )
    origin = types.SimpleNamespace(
        repository_origin=types.SimpleNamespace(container_context=container_context)
    )
    # Stand-ins for the DagsterRun and the launcher: create_for_run reads only these attributes.
    run: Any = types.SimpleNamespace(job_code_origin=origin, tags={})
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    job_config = context.get_k8s_job_config(
        job_image="registry.example.com/byoc-platform/dagster:0.1.0", run_launcher=launcher
    )
    job = construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123456789abcdef",
        pod_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=context.run_k8s_config,
        component="run_worker",
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def test_run_pods_built_by_dagster_k8s_are_valid_least_privilege_jobs() -> None:
    """Built as the cluster builds them: the launcher's config merged with whatever container
    context the chart gives the code location (a second `tmp` volume, the chart's
    ServiceAccount or the code server's resources would all end up in the run pod)."""
    manifest = build_run_job(code_location_container_context(VALUES))
    manifest.setdefault("metadata", {})["namespace"] = "byoc"
    kubernetes_validate.validate(manifest, "1.32", strict=True)

    pod = manifest["spec"]["template"]
    labels = pod["metadata"]["labels"]
    # The NetworkPolicies key on these labels (base/network/dagster.yaml and the opt-ins).
    assert labels["app.kubernetes.io/name"] == "dagster"
    assert labels["byoc-platform.io/needs-control-plane"] == "true"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "byoc-dagster-run"  # the archive role (IRSA)
    assert spec["automountServiceAccountToken"] is False
    volumes = [v["name"] for v in spec["volumes"]]
    assert len(volumes) == len(set(volumes)), f"the API server rejects repeated names: {volumes}"
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert len(mounts) == len(container["volumeMounts"]) and set(mounts.values()) <= set(volumes)
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    assert container["resources"] == launcher["resources"]  # sized for archival (README)
    sources = {k for e in container["envFrom"] for k in e if k.endswith("Ref")}
    assert sources == {"configMapRef", "secretRef"}
    for env in container.get("env", []):
        assert "PASSWORD" not in env["name"] or "valueFrom" in env


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_values_reference_objects_the_overlays_render(overlay: str) -> None:
    objs = render(overlay)
    named(objs, "ServiceAccount", VALUES["serviceAccount"]["name"])
    run_sa = VALUES["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    named(objs, "ServiceAccount", run_sa["serviceAccountName"])
    named(objs, "ConfigMap", "byoc-config")
    pg_cluster = named(objs, "Cluster", "byoc-dagster-pg")
    assert VALUES["postgresql"]["postgresqlHost"] == "byoc-dagster-pg-rw.byoc.svc"
    assert (
        pg_cluster["spec"]["bootstrap"]["initdb"]["database"]
        == (VALUES["postgresql"]["postgresqlDatabase"])
    )


def test_values_use_only_keys_the_chart_knows_and_the_code_location_contract() -> None:
    assert set(VALUES) <= CHART_TOP_LEVEL
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER_KEYS
    assert set(k8s["runK8sConfig"]) <= RUN_K8S_CONFIG_KEYS
    assert set(VALUES["postgresql"]) <= POSTGRES_KEYS
    assert VALUES["postgresql"]["enabled"] is False
    assert VALUES["postgresql"]["postgresqlPassword"] == ""  # from the existing Secret
    assert VALUES["generatePostgresqlPasswordSecret"] is False
    (location,) = VALUES["dagster-user-deployments"]["deployments"]
    assert set(location) <= USER_DEPLOYMENT_KEYS
    assert location["dagsterApiGrpcArgs"] == ["-m", "dagster_project.definitions"]
    dockerfile = (DEPLOY / "images" / "dagster" / "Dockerfile").read_text()
    assert f"EXPOSE {location['port']}" in dockerfile
    assert '"-m", "dagster_project.definitions"' in dockerfile
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert VALUES[component]["image"]["tag"] == "1.13.27"
