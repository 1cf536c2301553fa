from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.byoc_platform.control_plane.cp_harness import HOST, ControlPlaneProcess, run_cli


def test_port_in_use_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_cli(
            "--host", HOST, "--port", str(port), "--data-dir", str(tmp_path / "cp"), timeout=60
        )
    assert done.returncode == 1
    [line] = [json.loads(x) for x in done.stderr.splitlines() if "cannot listen" in x]
    assert line["level"] == "error"
    assert f"{HOST}:{port}" in line["msg"] and "already in use" in line["msg"].lower()
    assert line["port"] == port


def test_sigterm_stops_cleanly_with_exit_code_0(fresh_cp: ControlPlaneProcess) -> None:
    assert fresh_cp.stop() == 0
    log = [json.loads(line) for line in fresh_cp.log().splitlines()]
    assert all({"ts", "level", "msg", "component"} <= entry.keys() for entry in log)
    assert log[-1]["msg"] == "control plane stopped"


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = run_cli("--port", "not-a-port")
    assert done.returncode == 2 and "--port" in done.stderr
    done = run_cli("apply", "--data-dir", str(tmp_path), str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "missing.yaml" in done.stderr
