"""Shared by bench/rollup.py and bench/archive.py: a stack of real engines and timing helpers.

Runs its own stack (the same supervisor as `byoc up`) on free loopback ports in a temporary
directory, unless ``--stack-settings`` names the settings YAML of a running one (e.g.
``.byoc/settings.yaml`` of `byoc up`).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from byoc_platform.settings import Ports, Settings  # noqa: E402


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@contextmanager
def stack(
    components: list[str], stack_settings: str | None
) -> Iterator[tuple[Settings, str, dict[str, int]]]:
    """(settings, settings YAML path, component pids) of a running stack."""
    if stack_settings:
        settings = Settings(**yaml.safe_load(Path(stack_settings).read_text()))
        yield settings, stack_settings, {}
        return
    from byoc_platform.stack.supervisor import Supervisor

    with tempfile.TemporaryDirectory(prefix="byoc-bench-") as tmp:
        names = list(Ports.model_fields)
        ports = Ports(**dict(zip(names, _free_ports(len(names)), strict=True)))
        settings = Settings(data_dir=Path(tmp), ports=ports)
        supervisor = Supervisor(settings, components, restart=False)
        say(f"starting {', '.join(components)} in {tmp} ...")
        supervisor.start()
        try:
            pids = {name: r.process.pid for name, r in supervisor.running.items()}
            yield settings, str(settings.data_dir / "settings.yaml"), pids
        finally:
            supervisor.stop()


def load_average() -> float:
    return os.getloadavg()[0]
