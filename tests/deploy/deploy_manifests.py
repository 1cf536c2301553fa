"""Rendering and reading the deploy/ manifests, shared by the deploy tests."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from byoc_platform.settings import Settings

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


def container_env(objs: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """The literal variables a container starts with: its envFrom ConfigMaps, then its env
    entries (an explicit entry wins over envFrom, as in Kubernetes). Values from Secrets or the
    downward API are unknown here and left out."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env.pop(entry["name"], None)
    return env


def settings_from(env: dict[str, str]) -> Settings:
    """`Settings` as a process with exactly these BYOC_* variables reads them."""
    with mock.patch.dict(os.environ):
        for key in [k for k in os.environ if k.startswith("BYOC_")]:
            del os.environ[key]
        os.environ.update({k: v for k, v in env.items() if k.startswith("BYOC_")})
        return Settings()


def config_settings(objs: tuple[Obj, ...]) -> Settings:
    """The settings of the rendered ConfigMap byoc-config alone."""
    return settings_from(named(objs, "ConfigMap", "byoc-config")["data"])
