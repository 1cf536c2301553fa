"""Fixtures of the enforcement tests: a control plane process and a running runtime app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.enforcement.harness import ControlPlaneProcess, Runtime, make_settings, start_runtime


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("cp"))
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def runtime(
    control_plane: ControlPlaneProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    data_dir: Path = tmp_path_factory.mktemp("runtime")
    rt = start_runtime(make_settings(data_dir, control_plane.url))
    rt.sync_now()
    yield rt
    rt.stop()
