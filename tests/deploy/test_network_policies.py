"""The NetworkPolicies allow exactly the data flow: evaluated over the rendered policies for the
pods we define (their labels as rendered) and the operator-managed pods (their documented labels),
in a namespace whose default is deny in both directions."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from tests.deploy.deploy_manifests import (
    DEPLOY,
    OVERLAYS,
    OVERLAYS_DIR,
    container_env,
    named,
    of_kind,
    render,
    settings_from,
)

Labels = dict[str, str]

OPERATOR_PODS: dict[str, Labels] = {
    "kafka": {"strimzi.io/cluster": "byoc-kafka"},
    "clickhouse": {"app.kubernetes.io/name": "byoc-clickhouse"},
    "keeper": {"app.kubernetes.io/name": "byoc-keeper"},
    "ledger": {"cnpg.io/cluster": "byoc-ledger"},
    "dagster-pg": {"cnpg.io/cluster": "byoc-dagster-pg"},
}


def _matches(selector: dict, labels: Labels) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _port_ok(rule: dict, port: int) -> bool:
    return not rule.get("ports") or any(p["port"] == port for p in rule["ports"])


def _allowed(policies: list[dict], src: Labels, dst: Labels, port: int) -> bool:
    """Same-namespace pod-to-pod traffic: needs an egress rule for src AND an ingress for dst."""

    def direction(kind: str, own: Labels, peer: Labels, key: str) -> bool:
        for p in policies:
            spec = p["spec"]
            if kind not in spec["policyTypes"] or not _matches(spec["podSelector"], own):
                continue
            for rule in spec.get(kind.lower(), []):
                peers = rule.get(key, [])
                if any(
                    "podSelector" in x
                    and "namespaceSelector" not in x
                    and _matches(x["podSelector"], peer)
                    for x in peers
                ) and _port_ok(rule, port):
                    return True
        return False

    return direction("Egress", src, dst, "to") and direction("Ingress", dst, src, "from")


def _external_cidrs(policies: list[dict], src: Labels, port: int) -> set[str]:
    return {
        x["ipBlock"]["cidr"]
        for p in policies
        if "Egress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], src)
        for rule in p["spec"].get("egress", [])
        if _port_ok(rule, port)
        for x in rule.get("to", [])
        if "ipBlock" in x
    }


DAGSTER_VALUES = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
DAGSTER_RELEASE = "dagster"  # deploy/README.md, "Install order"


def _dagster_chart_pods(values: dict) -> dict[str, Labels]:
    """Pod labels the Dagster chart renders (dagster.selectorLabels + component + the values'
    labels). The code location comes from the dagster-user-deployments subchart, whose helpers
    name its pods after the subchart (charts/dagster-user-deployments/templates/
    helpers/_helpers.tpl and deployment-user.yaml); run pods get dagster-k8s's labels."""

    def chart(name: str, component: str, extra: Labels) -> Labels:
        return {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": DAGSTER_RELEASE,
            "component": component,
            **extra,
        }

    (location,) = values["dagster-user-deployments"]["deployments"]
    run_labels = values["runLauncher"]["config"]["k8sRunLauncher"]["labels"]
    return {
        "dagster-webserver": chart(
            "dagster", "dagster-webserver", values["dagsterWebserver"].get("labels", {})
        ),
        "dagster-daemon": chart(
            "dagster", "dagster-daemon", values["dagsterDaemon"].get("labels", {})
        ),
        "dagster-code-location": chart(
            "dagster-user-deployments",
            "user-deployments",
            {"deployment": location["name"], **location.get("labels", {})},
        ),
        "dagster-run": {
            "app.kubernetes.io/name": "dagster",
            "app.kubernetes.io/instance": DAGSTER_RELEASE,
            "app.kubernetes.io/component": "run_worker",
            **run_labels,
        },
    }


def _pods(overlay: str) -> dict[str, Labels]:
    objs = render(overlay)
    pods = dict(OPERATOR_PODS)
    for d in of_kind(objs, "Deployment") + of_kind(objs, "Job"):
        pods[d["metadata"]["name"]] = d["spec"]["template"]["metadata"]["labels"]
    for f in of_kind(objs, "FlinkDeployment"):
        pods["flink"] = f["spec"]["podTemplate"]["metadata"]["labels"]
    pods.update(_dagster_chart_pods(DAGSTER_VALUES))
    return pods


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_data_flow_edges_are_allowed_and_nothing_else(overlay: str) -> None:
    policies = of_kind(render(overlay), "NetworkPolicy")
    pods = _pods(overlay)
    api = pods["byoc-runtime-api"]
    allowed = [
        (api, pods["kafka"], 9092),
        (api, pods["ledger"], 5432),
        (pods["dagster-run"], pods["clickhouse"], 8123),
        (pods["dagster-run"], pods["dagster-pg"], 5432),
        (pods["clickhouse"], pods["keeper"], 2181),
        (pods["clickhouse"], pods["clickhouse"], 9009),
        (pods["kafka"], pods["kafka"], 9091),
    ]
    denied = [
        (api, pods["dagster-pg"], 5432),
        (pods["dagster-run"], pods["ledger"], 5432),
        (pods["kafka"], pods["clickhouse"], 8123),
    ]
    stream = "flink" if overlay == "production" else "byoc-stream-processor"
    allowed += [(pods[stream], pods["kafka"], 9092)]
    denied += [(pods[stream], pods["ledger"], 5432)]
    # The embedded processor writes its rows to ClickHouse; the Flink job reads and writes
    # Kafka only (streaming/flink/usage_job.py): ClickHouse pulls the rows from Kafka.
    (denied if stream == "flink" else allowed).append((pods[stream], pods["clickhouse"], 8123))
    # The schema migration Job talks to ClickHouse only.
    migrate = pods["byoc-warehouse-migrate"]
    allowed += [(migrate, pods["clickhouse"], 8123)]
    denied += [(migrate, pods["kafka"], 9092), (migrate, pods["ledger"], 5432)]
    # With Flink, ClickHouse's Kafka-engine tables read the job's row topics; without it,
    # ClickHouse never talks to Kafka.
    clickhouse_reads_kafka = (pods["clickhouse"], pods["kafka"], 9092)
    (allowed if overlay == "production" else denied).append(clickhouse_reads_kafka)
    for src, dst, port in allowed:
        assert _allowed(policies, src, dst, port), (src, dst, port)
    for src, dst, port in denied:
        assert not _allowed(policies, src, dst, port), (src, dst, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runtime_api_reaches_the_warehouse_exactly_when_it_replays_from_it(overlay: str) -> None:
    """With enforcement.rebuild_from_warehouse (the default) every runtime pod reads the current
    usage periods from ClickHouse on start (enforcement/usage_feed.py replay_from_warehouse)."""
    objs = render(overlay)
    (container,) = named(objs, "Deployment", "byoc-runtime-api")["spec"]["template"]["spec"][
        "containers"
    ]
    settings = settings_from(container_env(objs, container))
    pods = _pods(overlay)
    reaches = _allowed(
        of_kind(objs, "NetworkPolicy"), pods["byoc-runtime-api"], pods["clickhouse"], 8123
    )
    assert reaches == settings.enforcement.rebuild_from_warehouse


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dagster_pods_reach_the_code_location_and_their_storage(overlay: str) -> None:
    """The webserver and the daemon load definitions from the code location's gRPC server,
    which itself opens the instance (Dagster's PostgreSQL)."""
    policies = of_kind(render(overlay), "NetworkPolicy")
    pods = _pods(overlay)
    location = pods["dagster-code-location"]
    (values_location,) = DAGSTER_VALUES["dagster-user-deployments"]["deployments"]
    grpc = values_location["port"]
    allowed = [
        (pods["dagster-daemon"], location, grpc),
        (pods["dagster-webserver"], location, grpc),
        (location, pods["dagster-pg"], 5432),
        (pods["dagster-daemon"], pods["dagster-pg"], 5432),
        (pods["dagster-webserver"], pods["dagster-pg"], 5432),
        (location, pods["clickhouse"], 8123),
    ]
    denied = [
        (location, pods["ledger"], 5432),
        (location, pods["kafka"], 9092),
        (pods["byoc-runtime-api"], location, grpc),
    ]
    for src, dst, port in allowed:
        assert _allowed(policies, src, dst, port), (src, dst, port)
    for src, dst, port in denied:
        assert not _allowed(policies, src, dst, port), (src, dst, port)


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_only_labelled_pods_leave_the_cluster_and_only_to_the_overlay_cidrs(overlay: str) -> None:
    objs = render(overlay)
    policies = of_kind(objs, "NetworkPolicy")
    pods = _pods(overlay)
    cidrs = yaml.safe_load((OVERLAYS_DIR / overlay / "network-cidrs.yaml").read_text())["data"]
    # The runtime API reaches the control plane, and nothing else outside.
    assert _external_cidrs(policies, pods["byoc-runtime-api"], 443) == {cidrs["controlPlane"]}
    assert _external_cidrs(policies, pods["dagster-run"], 443) == {
        cidrs["controlPlane"],
        cidrs["cloudApis"],
    }
    for name in ("kafka", "clickhouse", "keeper"):
        assert not _external_cidrs(policies, pods[name], 443), name
    if overlay == "dev":
        assert not _external_cidrs(policies, pods["byoc-stream-processor"], 443)
    for p in policies:
        for rule in p["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    assert net.prefixlen >= 8, f"{p['metadata']['name']}: {net} is too wide"
    # The overlay's ConfigMap is the source and is not applied itself (local-config).
    assert not [
        c for c in of_kind(objs, "ConfigMap") if c["metadata"]["name"] == "byoc-network-cidrs"
    ]
    named(objs, "NetworkPolicy", "allow-kube-api-egress")
