"""The locked Python environment: Stigg's two Python SDKs that share ``stigg/__init__.py``.

``stigg`` (the REST SDK) and ``stigg-api-client-v2`` (the GraphQL client) both ship that file;
the installer that writes last wins, and uv installs wheels in parallel. ``stigg-sidecar-sdk``
imports ``from stigg import Stigg, AsyncStiggClient`` (the GraphQL client's), and the gRPC
service imports the sidecar SDK's generated classes: with the REST SDK's file on disk the
runtime API cannot start. So the images (``uv sync --no-dev``) install no REST SDK, and
``make install-python`` puts the GraphQL client's file back when the dev environment lost it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"


def test_the_rest_sdk_is_a_dev_dependency_only() -> None:
    lock = tomllib.loads(LOCK.read_text())
    [project] = [p for p in lock["package"] if p["name"] == "byoc-platform"]
    runtime = {d["name"] for d in project["dependencies"]}
    dev = {d["name"] for d in project["dev-dependencies"]["dev"]}
    assert {"stigg-api-client-v2", "stigg-sidecar-sdk"} <= runtime
    assert "stigg" not in runtime  # the images install only these
    assert "stigg" in dev  # the compatibility tests drive the REST SDK


def test_both_sdks_and_the_sidecar_sdk_import_side_by_side() -> None:
    import stigg_sidecar_sdk
    from stigg import AsyncStiggClient
    from stigg._client import Stigg as RestStigg
    from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

    assert stigg_sidecar_sdk.Stigg is not None and AsyncStiggClient is not None
    assert RestStigg.__module__ == "stigg._client"
    assert pb.SidecarServiceStub is not None
