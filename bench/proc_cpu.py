"""CPU time of processes from Linux /proc, for the bench harnesses: what a process costs,
whatever else the machine runs (unlike wall time)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of a process so far; with ``children``, plus that of its running
    child processes (e.g. the ledger writer)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if children:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += cpu_seconds(int(child))
    return total


def cpu_seconds_if_running(pid: int | None) -> float | None:
    """:func:`cpu_seconds`, or None without a pid or once the process is gone."""
    if not pid:
        return None
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
