"""Fixtures: real control-plane server subprocesses (see cp_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from byoc_platform.control_plane.client import ControlPlaneClient
from tests.byoc_platform.control_plane.cp_harness import ControlPlaneProcess


@pytest.fixture
def fresh_cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A new server on an empty data dir (default seed), for tests that restart it."""
    cp = ControlPlaneProcess(tmp_path / "cp")
    yield cp.start()
    if cp.proc is not None:
        cp.stop()


@pytest.fixture(scope="module")
def shared_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    """One server per test module; tests that write use their own environment id."""
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("shared") / "cp")
    yield cp.start()
    if cp.proc is not None:
        cp.stop()


@pytest.fixture
def client(shared_cp: ControlPlaneProcess) -> Iterator[ControlPlaneClient]:
    with shared_cp.client() as c:
        yield c
