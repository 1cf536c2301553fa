"""Rendering and reading the deploy/ manifests, shared by the deploy tests."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS_DIR = DEPLOY / "k8s" / "overlays"
OVERLAYS = ("dev", "production")
KUBECTL = "/usr/bin/kubectl"

Obj = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    """`kubectl kustomize` of one overlay, parsed (cached: each overlay renders once per run)."""
    out = subprocess.run(
        [KUBECTL, "kustomize", str(OVERLAYS_DIR / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(objs: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj, Obj]]:
    """(owner object, pod metadata, pod spec) of every pod template we define."""
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tpl = o["spec"]["template"]
            yield o, tpl.get("metadata", {}), tpl["spec"]
        elif o["kind"] == "FlinkDeployment":
            tpl = o["spec"]["podTemplate"]
            yield o, tpl.get("metadata", {}), tpl["spec"]


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values
