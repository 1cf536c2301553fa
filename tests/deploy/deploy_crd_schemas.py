"""Small JSON Schemas for the operator resources we render, one per kind.

The operators' CRDs (and their full OpenAPI schemas) are installed with the operators, not
shipped in any package reachable here, so these schemas encode the fields each operator
documents, with their required fields, types and enums. ``additionalProperties: false`` on the
levels we write catches misspelt fields; when a manifest starts using another documented field,
add it here together with the doc it comes from.

Sources:
- FlinkDeployment: Flink Kubernetes Operator, "Custom Resource reference" (FlinkDeploymentSpec,
  JobSpec, JobManagerSpec, TaskManagerSpec, Resource, FlinkVersion, UpgradeMode, JobState)
  https://nightlies.apache.org/flink/flink-kubernetes-operator-docs-stable/docs/custom-resource/reference/
- Kafka, KafkaNodePool, KafkaTopic: Strimzi "Custom resource API reference" (v1beta2)
  https://strimzi.io/docs/operators/latest/configuring.html#api_reference-str
- ClickHouseInstallation, ClickHouseKeeperInstallation: Altinity clickhouse-operator,
  docs/custom_resource_explained.md and docs/chk-examples
  https://github.com/Altinity/clickhouse-operator/tree/master/docs
- Cluster: CloudNativePG API reference (postgresql.cnpg.io/v1)
  https://cloudnative-pg.io/documentation/current/cloudnative-pg.v1/
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
_QUANTITY = {"type": ["string", "number"]}
_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


def _resource(api_version: str, kind: str, spec: Schema, labels: Schema | None = None) -> Schema:
    metadata: Schema = {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {"name": _NAME, "namespace": _NAME},
    }
    if labels:
        metadata["required"] = [*metadata["required"], "labels"]
        metadata["properties"]["labels"] = labels
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        },
    }


def _closed(properties: Schema, required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required or [],
        "properties": properties,
    }


# --- Flink Kubernetes Operator ------------------------------------------------------------
_FLINK_RESOURCE = _closed(
    {"cpu": {"type": "number", "exclusiveMinimum": 0}, "memory": _STR, "ephemeralStorage": _STR},
    ["cpu", "memory"],
)
_FLINK_COMPONENT = _closed(
    {
        "resource": _FLINK_RESOURCE,
        "replicas": {"type": "integer", "minimum": 1},
        "podTemplate": _OBJ,
    },
    ["resource"],
)
FLINK_DEPLOYMENT = _resource(
    "flink.apache.org/v1beta1",
    "FlinkDeployment",
    _closed(
        {
            "image": _STR,
            "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            "serviceAccount": _STR,
            "flinkVersion": {"type": "string", "pattern": "^v[12]_[0-9]+$"},
            "mode": {"enum": ["native", "standalone"]},
            "flinkConfiguration": _STR_MAP,
            "logConfiguration": _STR_MAP,
            "ingress": _OBJ,
            "podTemplate": _OBJ,
            "restartNonce": _INT,
            "jobManager": _FLINK_COMPONENT,
            "taskManager": _FLINK_COMPONENT,
            "job": _closed(
                {
                    "jarURI": _STR,
                    "entryClass": _STR,
                    "args": {"type": "array", "items": _STR},
                    "parallelism": {"type": "integer", "minimum": 1},
                    "state": {"enum": ["running", "suspended"]},
                    "upgradeMode": {"enum": ["stateless", "savepoint", "last-state"]},
                    "initialSavepointPath": _STR,
                    "allowNonRestoredState": _BOOL,
                    "savepointTriggerNonce": _INT,
                    "checkpointTriggerNonce": _INT,
                    "savepointRedeployNonce": _INT,
                },
                ["jarURI", "upgradeMode"],
            ),
        },
        ["image", "flinkVersion", "serviceAccount", "jobManager", "taskManager"],
    ),
)

# --- Strimzi ---------------------------------------------------------------------------------
_STRIMZI_CLUSTER_LABEL = {
    "type": "object",
    "required": ["strimzi.io/cluster"],
    "properties": {"strimzi.io/cluster": _NAME},
}
_STRIMZI_RESOURCES = _closed({"requests": _STR_MAP, "limits": _STR_MAP})
_LISTENER = _closed(
    {
        "name": {"type": "string", "pattern": "^[a-z0-9]{1,11}$"},
        # 9404 (JMX exporter) and 9999 (JMX) are reserved; ports below 9092 are Strimzi's own.
        "port": {"type": "integer", "minimum": 9092, "not": {"enum": [9404, 9999]}},
        "type": {
            "enum": ["internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"]
        },
        "tls": _BOOL,
        "authentication": _closed(
            {"type": {"enum": ["tls", "scram-sha-512", "oauth", "custom"]}}, ["type"]
        ),
        "networkPolicyPeers": {"type": "array", "items": _OBJ},
        "configuration": _OBJ,
    },
    ["name", "port", "type", "tls"],
)
_OPERATOR = _closed(
    {
        "resources": _STRIMZI_RESOURCES,
        "reconciliationIntervalMs": _INT,
        "logging": _OBJ,
        "jvmOptions": _OBJ,
    }
)
KAFKA = _resource(
    "kafka.strimzi.io/v1beta2",
    "Kafka",
    _closed(
        {
            "kafka": _closed(
                {
                    "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                    "metadataVersion": _STR,
                    "listeners": {"type": "array", "minItems": 1, "items": _LISTENER},
                    "config": _OBJ,
                    "rack": _closed({"topologyKey": _STR}, ["topologyKey"]),
                    "authorization": _OBJ,
                    "template": _OBJ,
                    "metricsConfig": _OBJ,
                    "logging": _OBJ,
                },
                ["listeners"],
            ),
            "entityOperator": _closed(
                {"topicOperator": _OPERATOR, "userOperator": _OPERATOR, "template": _OBJ}
            ),
            "cruiseControl": _OBJ,
            "kafkaExporter": _OBJ,
        },
        ["kafka"],
    ),
)
_STORAGE_VOLUME = _closed(
    {
        "id": {"type": "integer", "minimum": 0},
        "type": {"enum": ["persistent-claim", "ephemeral"]},
        "size": _STR,
        "class": _STR,
        "deleteClaim": _BOOL,
        "kraftMetadata": {"enum": ["shared"]},
    },
    ["type"],
)
KAFKA_NODE_POOL = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaNodePool",
    _closed(
        {
            "replicas": {"type": "integer", "minimum": 0},
            "roles": {
                "type": "array",
                "minItems": 1,
                "items": {"enum": ["controller", "broker"]},
                "uniqueItems": True,
            },
            "storage": _closed(
                {
                    "type": {"enum": ["jbod", "ephemeral", "persistent-claim"]},
                    "volumes": {"type": "array", "items": _STORAGE_VOLUME},
                },
                ["type"],
            ),
            "resources": _STRIMZI_RESOURCES,
            "jvmOptions": _closed({"-Xms": _STR, "-Xmx": _STR}),
            "template": _OBJ,
        },
        ["replicas", "roles", "storage"],
    ),
    _STRIMZI_CLUSTER_LABEL,
)
KAFKA_TOPIC = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaTopic",
    _closed(
        {
            "topicName": _STR,
            "partitions": {"type": "integer", "minimum": 1},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
            "config": _OBJ,
        },
        ["partitions", "replicas"],
    ),
    _STRIMZI_CLUSTER_LABEL,
)

# --- Altinity ClickHouse operator --------------------------------------------------------------
_CH_TEMPLATES = _closed(
    {
        "podTemplates": {
            "type": "array",
            "items": _closed(
                {
                    "name": _STR,
                    "metadata": _OBJ,
                    "spec": _OBJ,
                    "zone": _OBJ,
                    "podDistribution": {"type": "array"},
                    "generateName": _STR,
                },
                ["name", "spec"],
            ),
        },
        "volumeClaimTemplates": {
            "type": "array",
            "items": _closed(
                {"name": _STR, "spec": _OBJ, "metadata": _OBJ, "reclaimPolicy": _STR},
                ["name", "spec"],
            ),
        },
        "serviceTemplates": {"type": "array"},
    }
)
_CH_DEFAULTS = _closed(
    {
        "templates": _closed(
            {
                "podTemplate": _STR,
                "dataVolumeClaimTemplate": _STR,
                "logVolumeClaimTemplate": _STR,
                "serviceTemplate": _STR,
            }
        )
    }
)


def _ch_cluster(layout: Schema) -> Schema:
    return {
        "type": "array",
        "minItems": 1,
        "items": _closed(
            {
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9-]{0,15}$"},
                "layout": layout,
                "templates": _OBJ,
            },
            ["name"],
        ),
    }


CLICKHOUSE_INSTALLATION = _resource(
    "clickhouse.altinity.com/v1",
    "ClickHouseInstallation",
    _closed(
        {
            "defaults": _CH_DEFAULTS,
            "configuration": _closed(
                {
                    "zookeeper": _closed(
                        {
                            "nodes": {
                                "type": "array",
                                "minItems": 1,
                                "items": _closed({"host": _STR, "port": _INT}, ["host"]),
                            }
                        }
                    ),
                    "users": _OBJ,
                    "profiles": _OBJ,
                    "quotas": _OBJ,
                    "settings": _OBJ,
                    "files": _OBJ,
                    "clusters": _ch_cluster(
                        _closed(
                            {
                                "shardsCount": {"type": "integer", "minimum": 1},
                                "replicasCount": {"type": "integer", "minimum": 1},
                            }
                        )
                    ),
                },
                ["clusters"],
            ),
            "templates": _CH_TEMPLATES,
        },
        ["configuration"],
    ),
)
CLICKHOUSE_KEEPER_INSTALLATION = _resource(
    "clickhouse-keeper.altinity.com/v1",
    "ClickHouseKeeperInstallation",
    _closed(
        {
            "defaults": _CH_DEFAULTS,
            "configuration": _closed(
                {
                    "settings": _OBJ,
                    "clusters": _ch_cluster(
                        _closed(
                            # Raft needs an odd member count for a majority.
                            {"replicasCount": {"enum": [1, 3, 5, 7]}}
                        )
                    ),
                },
                ["clusters"],
            ),
            "templates": _CH_TEMPLATES,
        },
        ["configuration"],
    ),
)

# --- CloudNativePG -----------------------------------------------------------------------------
CNPG_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    _closed(
        {
            "instances": {"type": "integer", "minimum": 1},
            "imageName": _STR,
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "inheritedMetadata": _closed({"labels": _STR_MAP, "annotations": _STR_MAP}),
            "postgresql": _closed(
                {
                    "parameters": {"type": "object", "additionalProperties": _STR},
                    "synchronous": _closed(
                        {
                            "method": {"enum": ["any", "first"]},
                            "number": {"type": "integer", "minimum": 1},
                        },
                        ["method", "number"],
                    ),
                    "pg_hba": {"type": "array"},
                }
            ),
            "bootstrap": _closed(
                {
                    "initdb": _closed(
                        {
                            "database": _STR,
                            "owner": _STR,
                            "secret": _closed({"name": _STR}, ["name"]),
                            "postInitSQL": {"type": "array"},
                        },
                        ["database", "owner"],
                    )
                }
            ),
            "enableSuperuserAccess": _BOOL,
            "storage": _closed({"size": _STR, "storageClass": _STR}, ["size"]),
            "resources": _closed({"requests": _STR_MAP, "limits": _STR_MAP}),
            "affinity": _closed(
                {
                    "enablePodAntiAffinity": _BOOL,
                    "topologyKey": _STR,
                    "podAntiAffinityType": {"enum": ["preferred", "required"]},
                    "nodeSelector": _STR_MAP,
                    "tolerations": {"type": "array"},
                }
            ),
            "topologySpreadConstraints": {"type": "array"},
            "monitoring": _OBJ,
            "backup": _OBJ,
        },
        ["instances", "storage"],
    ),
)

CRD_SCHEMAS: dict[tuple[str, str], Schema] = {
    (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"]): s
    for s in (
        FLINK_DEPLOYMENT,
        KAFKA,
        KAFKA_NODE_POOL,
        KAFKA_TOPIC,
        CLICKHOUSE_INSTALLATION,
        CLICKHOUSE_KEEPER_INSTALLATION,
        CNPG_CLUSTER,
    )
}
