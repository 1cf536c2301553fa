"""Starts, watches and stops the local stack's processes.

Policy when a child dies (DESIGN decision, see README): the supervisor restarts it, waits for
it to be healthy again and re-runs its bootstrap; a component that dies more than
``max_restarts`` times within ``restart_window_s`` stops the whole stack with an error naming it
and its log. Children run in their own process group (Ctrl-C reaches only the supervisor,
which stops them in reverse order) and get SIGTERM if the supervisor itself dies
(PR_SET_PDEATHSIG), so no process is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from byoc_platform.stack.bootstrap import write_stack_file
from byoc_platform.stack.components import BY_NAME, COMPONENTS, Component
from byoc_platform.stack.processes import start_ticks

if TYPE_CHECKING:
    from byoc_platform.settings import Settings

log = logging.getLogger("byoc.stack")

_PR_SET_PDEATHSIG = 1


class ComponentFailed(RuntimeError):
    """A component could not start or keep running; names it and its log."""

    def __init__(self, component: str, reason: str, log_path: Path | None) -> None:
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{component}: {reason}{where}")
        self.component = component
        self.reason = reason
        self.log_path = log_path


@dataclass
class Running:
    component: Component
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    restarts: deque[float] = field(default_factory=deque)


def _child_setup() -> None:
    # New session: the terminal's Ctrl-C reaches only the supervisor. Default signal
    # dispositions: `dagster dev` started from a shell with & inherits SIGINT ignored and then
    # ignores SIGTERM too (platform-facts.md). PDEATHSIG: die with the supervisor.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as servers set it: a port with connections in TIME_WAIT (a component
        # just killed) is free to listen on again; an active listener still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


class Supervisor:
    """Runs the named components of one stack (all of them by default)."""

    def __init__(
        self,
        settings: Settings,
        names: Iterable[str] | None = None,
        *,
        restart: bool = True,
        max_restarts: int = 10,
        restart_window_s: float = 600.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        wanted = list(names) if names is not None else [c.name for c in COMPONENTS]
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown components {unknown}; known: {list(BY_NAME)}")
        self.components = [c for c in COMPONENTS if c.name in wanted]
        self.restart = restart
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.running: dict[str, Running] = {}
        self.dead: dict[str, Running] = {}  # exited and not restarted
        self._pending: dict[str, tuple[deque[float], float]] = {}  # restarts due, and when
        self._lock = threading.RLock()
        self.logs_dir = settings.component_dir("logs")
        self._settings_file = settings.stack_settings_file

    # -- environment of the children ------------------------------------------------------

    def _child_env(self, component: Component) -> dict[str, str]:
        # The children read the same settings from one file; stray BYOC_* variables of the
        # caller's shell must not make them disagree with the supervisor.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
        env["BYOC_CONFIG_FILE"] = str(self._settings_file)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(component.env(self.settings))
        return env

    def _write_settings(self) -> None:
        data = self.settings.model_dump(mode="json", exclude={"api_key"})
        self._settings_file.write_text(yaml.safe_dump(data, sort_keys=False))
        self._settings_file.chmod(0o600)

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every component in order; on any failure stop what started and raise."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        if self.settings.host not in ("127.0.0.1", "localhost", "::1"):
            # Loopback is the default; anything else exposes every component: say so.
            message = (
                f"warning: the stack binds {self.settings.host}, not loopback: its components "
                "are reachable from the network"
            )
            self.on_event(message)
        try:
            for component in self.components:
                self._start(component)
                self.write_state()
        except BaseException:
            self.stop()
            raise

    def _start(self, component: Component, restarts: deque[float] | None = None) -> None:
        s = self.settings
        busy = [
            f"{role} {port}"
            for role, port in component.ports(s).items()
            if port_in_use(s.host, port)
        ]
        log_path = self.logs_dir / f"{component.name}.log"
        if busy:
            raise ComponentFailed(
                component.name,
                f"port already in use on {s.host}: {', '.join(busy)} (another stack running? "
                "stop it with `byoc down`, or choose other ports with BYOC_PORTS__*)",
                None,
            )
        try:
            component.prepare(s)
            command = component.command(s)
            cwd = s.component_dir(component.name)
        except FileNotFoundError as exc:
            raise ComponentFailed(component.name, str(exc), None) from exc
        except OSError as exc:
            raise ComponentFailed(component.name, f"cannot prepare its data: {exc}", None) from exc
        with open(log_path, "ab") as out:
            out.write(
                f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                f"{' '.join(command)}\n".encode()
            )
        out = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=self._child_env(component),
                preexec_fn=_child_setup,
            )
        except OSError as exc:
            raise ComponentFailed(component.name, f"cannot start: {exc}", log_path) from exc
        finally:
            out.close()
        running = Running(component, process, log_path, time.time(), restarts or deque())
        with self._lock:
            self.running[component.name] = running
        try:
            self._wait_healthy(running)
            try:
                component.bootstrap(s)
            except Exception as exc:
                raise ComponentFailed(component.name, f"bootstrap failed: {exc}", log_path) from exc
        except BaseException:
            with self._lock:
                self.running.pop(component.name, None)
            self._terminate(running)
            raise
        self.on_event(f"{component.name} healthy (pid {process.pid}) {component.endpoint(s)}")

    def _wait_healthy(self, running: Running) -> None:
        component = running.component
        deadline = time.monotonic() + component.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = running.process.poll()
            if code is not None:
                raise ComponentFailed(
                    component.name,
                    f"exited with code {code} while starting; last log lines:\n"
                    f"{log_tail(running.log_path)}",
                    running.log_path,
                )
            try:
                component.probe(self.settings)
                return
            except Exception as exc:
                last_error = exc
                time.sleep(0.2)
        raise ComponentFailed(
            component.name,
            f"not healthy after {component.start_timeout_s:.0f}s ({last_error})",
            running.log_path,
        )

    def stop(self) -> None:
        """Stop every running child, in reverse start order."""
        with self._lock:
            order = [
                self.running[c.name] for c in reversed(self.components) if c.name in self.running
            ]
            for running in order:
                self._terminate(running)
                self.running.pop(running.component.name, None)
            self.write_state(stopped=True)

    def _terminate(self, running: Running) -> None:
        process = running.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(running.component.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.on_event(
                    f"{running.component.name} did not stop in "
                    f"{running.component.stop_timeout_s:.0f}s: killing"
                )
        # The group may hold grandchildren (dagster dev's webserver and daemon).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        self.on_event(f"{running.component.name} stopped")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send a signal to one component's main process (fault tests); returns its pid."""
        with self._lock:
            running = self.running[name]
        os.kill(running.process.pid, sig)
        return running.process.pid

    # -- watching -------------------------------------------------------------------------

    def check(self) -> None:
        """Restart children that died (or raise when a child keeps dying)."""
        now = time.time()
        for component in self.components:
            name = component.name
            with self._lock:
                running = self.running.get(name)
            if running is not None:
                code = running.process.poll()
                if code is None:
                    continue
                # Reap the rest of its process group before starting a new one.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                with self._lock:
                    self.running.pop(name, None)
                if not self.restart:
                    # Keep the rest running; `byoc status` shows this one as down.
                    self.dead[name] = running
                    self.on_event(
                        f"{name} exited with code {code}; not restarting "
                        f"(restarts disabled; log: {running.log_path})"
                    )
                    self.write_state()
                    continue
                self.on_event(
                    f"{name} exited with code {code}; restarting (log: {running.log_path})"
                )
                self._pending[name] = (running.restarts, now)
                self.write_state()
            if name not in self._pending or now < self._pending[name][1]:
                continue
            restarts = self._pending[name][0]
            while restarts and now - restarts[0] > self.restart_window_s:
                restarts.popleft()
            if len(restarts) >= self.max_restarts:
                raise ComponentFailed(
                    name,
                    f"died and was restarted {len(restarts)} times in "
                    f"{self.restart_window_s:.0f}s; giving up",
                    self.logs_dir / f"{name}.log",
                )
            restarts.append(now)
            try:
                self._start(component, restarts)
            except ComponentFailed as exc:
                # E.g. a dependency is restarting too: try again shortly.
                self.on_event(f"restart {len(restarts)} of {name} failed: {exc}; retrying")
                self._pending[name] = (restarts, time.time() + 2.0)
                continue
            del self._pending[name]
            self.on_event(f"{name} restarted (restart {len(restarts)})")
            self.write_state()

    def run_forever(self, poll_s: float = 0.5) -> None:
        """Watch until SIGINT/SIGTERM, then stop everything."""
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while not stop.wait(poll_s):
                self.check()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.on_event("stopping the stack")
            self.stop()

    # -- state file -----------------------------------------------------------------------

    def write_state(self, stopped: bool = False) -> None:
        s = self.settings
        try:
            data: dict[str, Any] = json.loads(s.stack_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        data.update(
            {
                "supervisor_pid": None if stopped else os.getpid(),
                "supervisor_start": None if stopped else start_ticks(os.getpid()),
                "data_dir": str(s.data_dir),
                "environment": s.environment,
                "settings_file": str(self._settings_file),
                "endpoints": {c.name: c.endpoint(s) for c in self.components},
                "components": {
                    c.name: {
                        "pid": (r.process.pid if (r := self.running.get(c.name)) else None),
                        "pid_start": start_ticks(r.process.pid) if r else None,
                        "ports": c.ports(s),
                        "endpoint": c.endpoint(s),
                        "log": str(self.logs_dir / f"{c.name}.log"),
                        "started_at": r.started_at if r else None,
                        "restarts": len(r.restarts) if r else 0,
                    }
                    for c in self.components
                },
            }
        )
        write_stack_file(s, data)
