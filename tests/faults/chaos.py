"""The fault driver: SIGKILL components of a running stack, in turn and at seeded random
moments, while a watchdog thread lets the stack supervisor restart them (as `byoc up` does).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field

from byoc_platform.stack.components import BY_NAME
from byoc_platform.stack.supervisor import Supervisor


class Watchdog(threading.Thread):
    """Calls ``supervisor.check()`` every ``interval_s`` (restarts dead children).

    The thread must outlive the children it restarted: the supervisor starts children with
    PR_SET_PDEATHSIG, which fires when the THREAD that forked them exits, not the process.
    So :meth:`pause` stops the checks (before ``supervisor.stop()``, which must not race a
    restart) and :meth:`stop` ends the thread only after the stack is stopped.
    """

    def __init__(self, supervisor: Supervisor, interval_s: float = 0.5) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.supervisor = supervisor
        self.interval_s = interval_s
        self.paused = threading.Event()
        self.stop_event = threading.Event()
        self.idle = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            if self.paused.is_set() or self.error is not None:
                self.idle.set()
                continue
            try:
                self.supervisor.check()
            except BaseException as exc:  # ComponentFailed: gave up restarting
                self.error = exc

    def pause(self) -> None:
        self.paused.set()
        self.idle.clear()
        self.idle.wait(120)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)


@dataclass
class Kill:
    round: int
    component: str
    pid: int
    at_s: float  # since the driver started
    back_after_s: float = 0.0  # until the restarted component was healthy


@dataclass
class KillPlan:
    """The seeded schedule: each round kills every component once, in a shuffled order,
    after a random pause."""

    components: list[str]
    rounds: int
    seed: int
    pause_s: tuple[float, float] = (1.0, 4.0)
    steps: list[tuple[int, str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(f"{self.seed}/kills")
        for r in range(self.rounds):
            order = list(self.components)
            rng.shuffle(order)
            for name in order:
                self.steps.append((r, name, rng.uniform(*self.pause_s)))


def wait_healthy(
    supervisor: Supervisor, name: str, watchdog: Watchdog, timeout_s: float, old_pid: int = -1
) -> None:
    """Until ``name`` runs (under a pid other than ``old_pid``) and answers its health probe."""
    component = BY_NAME[name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if watchdog.error is not None:
            raise AssertionError(f"the supervisor gave up: {watchdog.error}")
        with supervisor._lock:
            running = supervisor.running.get(name)
        alive = running is not None and running.process.poll() is None
        if alive and running is not None and running.process.pid != old_pid:
            try:
                component.probe(supervisor.settings)
                return
            except Exception:
                pass
        time.sleep(0.2)
    raise AssertionError(f"{name} not restarted and healthy within {timeout_s:.0f}s")


def run_kills(
    supervisor: Supervisor,
    plan: KillPlan,
    watchdog: Watchdog,
    on_kill: object = None,
    restart_timeout_s: float = 120.0,
) -> list[Kill]:
    """Execute the plan; returns what was killed, when, and how long it took to come back."""
    started = time.monotonic()
    kills: list[Kill] = []
    names = [c.name for c in supervisor.components]
    for round_, name, pause in plan.steps:
        # In turn: the whole stack is back (a dependency may have died with the last victim).
        for other in names:
            wait_healthy(supervisor, other, watchdog, restart_timeout_s)
        time.sleep(pause)
        pid = supervisor.kill(name, signal.SIGKILL)
        kill = Kill(round_, name, pid, time.monotonic() - started)
        wait_healthy(supervisor, name, watchdog, restart_timeout_s, old_pid=pid)
        kill.back_after_s = time.monotonic() - started - kill.at_s
        kills.append(kill)
        if callable(on_kill):
            on_kill(kill)
    return kills
