"""Every process of the stack listens on loopback only by default, and a component configured
to bind another address says so in its log.

The listening sockets are read from the kernel (/proc/net/tcp{,6} matched against each
process's socket inodes), so a port a component opens without telling anyone (an admin or
metrics port of an embedded server) is checked too.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from byoc_platform.settings import Settings
from tests.security.conftest import SecureStack
from tests.stack_fixtures import free_port, settings_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LISTEN = "0A"


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket."""
    out: dict[str, tuple[str, int]] = {}
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN:
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints the address as host-order 32-bit words.
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            address = ipaddress.ip_address(b"".join(words))
            if size == 16 and address.ipv4_mapped:
                address = address.ipv4_mapped
            out[inode] = (str(address), int(hex_port, 16))
    return out


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    sockets = _listening_sockets()
    inodes = set().union(*(_socket_inodes(p) for p in _descendants(pid)))
    return {sockets[i] for i in inodes if i in sockets}


def test_every_component_listens_on_loopback_only(secure_stack: SecureStack) -> None:
    supervisor = secure_stack.supervisor
    seen: dict[str, set[tuple[str, int]]] = {}
    for name, running in supervisor.running.items():
        seen[name] = listening_addresses(running.process.pid)
    assert set(seen) == {"kms", "s3", "kafka", "warehouse", "control-plane", "api", "stream"}
    for name, addresses in seen.items():
        assert addresses, f"{name} listens on nothing?"
        exposed = {a for a in addresses if not ipaddress.ip_address(a[0]).is_loopback}
        assert not exposed, f"{name} listens beyond loopback: {sorted(exposed)}"
    # The declared ports are among them (the check looked at the right processes).
    s = secure_stack.settings
    assert ("127.0.0.1", s.ports.api) in seen["api"]
    assert ("127.0.0.1", s.ports.grpc) in seen["api"]
    assert ("127.0.0.1", s.ports.kafka) in seen["kafka"]
    assert ("127.0.0.1", s.ports.s3) in seen["s3"]


def test_a_runtime_api_bound_elsewhere_warns_in_its_log(tmp_path: Path) -> None:
    # 127.0.0.2 is still loopback (tests stay on the machine) but not the default address.
    settings = Settings(data_dir=tmp_path / "data", host="127.0.0.2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env.update(settings_env(settings))
    env.update(
        {
            "BYOC_HOST": "127.0.0.2",
            "BYOC_PORTS__API": str(free_port()),
            "BYOC_PORTS__GRPC": str(free_port()),
            # Nothing listens there: the API starts anyway (not ready), which is all we need.
            "BYOC_KAFKA__BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "BYOC_CONTROL_PLANE__API_URL": f"http://127.0.0.1:{free_port()}/graphql",
            "BYOC_ENFORCEMENT__REBUILD_FROM_WAREHOUSE": "false",
            "BYOC_ENFORCEMENT__CONSUME_USAGE": "false",
        }
    )
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "byoc_platform", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    url = f"http://127.0.0.2:{env['BYOC_PORTS__API']}/healthz"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        addresses = listening_addresses(proc.pid)
        assert ("127.0.0.2", int(env["BYOC_PORTS__API"])) in addresses
        warnings = [
            line
            for line in log_path.read_text().splitlines()
            if '"level": "warning"' in line and "binds 127.0.0.2, not loopback" in line
        ]
        assert warnings, log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_stack_supervisor_warns_when_not_on_loopback(tmp_path: Path) -> None:
    from byoc_platform.stack.supervisor import Supervisor
    from tests.stack_fixtures import test_settings

    settings = test_settings(tmp_path / "data", host="127.0.0.2")
    events: list[str] = []
    supervisor = Supervisor(settings, ["kms"], restart=False, on_event=events.append)
    supervisor.start()
    try:
        pid = supervisor.running["kms"].process.pid
        assert ("127.0.0.2", settings.ports.kms) in listening_addresses(pid)
    finally:
        supervisor.stop()
    assert any("binds 127.0.0.2, not loopback" in e for e in events), events


def test_dagster_listens_on_loopback_only(tmp_path: Path) -> None:
    # Not part of the shared secure stack (it costs ~0.7 GB): its own supervisor, as `byoc up`.
    from byoc_platform.stack.supervisor import Supervisor
    from tests.stack_fixtures import test_settings

    settings = test_settings(tmp_path / "data")
    supervisor = Supervisor(settings, ["dagster"], restart=False)
    supervisor.start()
    try:
        time.sleep(3.0)  # the daemon and the code server come up after the UI answers
        addresses = listening_addresses(supervisor.running["dagster"].process.pid)
    finally:
        supervisor.stop()
    assert ("127.0.0.1", settings.ports.dagster) in addresses
    exposed = {a for a in addresses if not ipaddress.ip_address(a[0]).is_loopback}
    assert not exposed, exposed
