"""Whether a PID recorded in stack.json is still the process that was recorded.

A stack.json outlives its processes (a supervisor killed with SIGKILL, a reboot), and the OS
hands their PIDs out again: `byoc down` must never signal whatever holds such a PID now. So
stack.json records each process's start time as well (field 22 of ``/proc/PID/stat``, clock
ticks since boot), and a PID counts as ours only while that start time is the same.
"""

from __future__ import annotations


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has ended: not running
        return None
    return int(fields[19])


def is_running(pid: object, started: object = None) -> bool:
    """Whether ``pid`` runs and, when ``started`` (start ticks) was recorded, is that process.

    A state file written before start times were recorded has none: the PID alone decides."""
    if type(pid) is not int or pid <= 0:
        return False
    now = start_ticks(pid)
    if now is None:
        return False
    return started is None or now == started
