"""Every rendered object validates: built-in kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, offline), operator CRDs against the documented fields (crd_schemas)."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.deploy_crd_schemas import CRD_SCHEMAS
from tests.deploy.deploy_manifests import OVERLAYS, render

K8S_VERSION = "1.32"


def _is_crd(obj: dict) -> bool:
    return (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_match_the_kubernetes_openapi_schema(overlay: str) -> None:
    builtin = [o for o in render(overlay) if not _is_crd(o)]
    assert builtin, "no built-in objects rendered"
    for obj in builtin:
        # strict=True: unknown fields (typos) are errors, not silently dropped by the API server.
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_resources_match_their_documented_fields(overlay: str) -> None:
    kinds = set()
    for obj in render(overlay):
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[key])
            kinds.add(obj["kind"])
    expected = {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "ClickHouseInstallation",
        "ClickHouseKeeperInstallation",
        "Cluster",
    }
    if overlay == "production":
        expected.add("FlinkDeployment")
    assert expected <= kinds


def test_every_rendered_kind_has_a_schema() -> None:
    for overlay in OVERLAYS:
        for obj in render(overlay):
            if _is_crd(obj):
                continue
            # kubernetes-validate raises SchemaNotFoundError for kinds it does not know, so an
            # unknown CRD cannot slip through as "built-in".
            kubernetes_validate.validate(obj, K8S_VERSION, strict=False)


def test_schema_validation_rejects_a_typo() -> None:
    """The validators catch what they claim to: a misspelt field fails both kinds of check."""
    deployment = next(o for o in render("production") if o["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)

    flink = next(o for o in render("production") if o["kind"] == "FlinkDeployment")
    bad_flink = copy.deepcopy(flink)
    bad_flink["spec"]["job"]["upgradeMode"] = "sometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_flink, CRD_SCHEMAS[(flink["apiVersion"], flink["kind"])])
