"""The `byoc` command line.

Core commands live here; the other parts add theirs through the ``byoc.cli`` entry points
(e.g. ``byoc stream`` from streaming/, ``byoc archive`` from assets/).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from byoc_platform import logs
from byoc_platform.cli_settings import DataDir, load_settings, running_stack_settings
from byoc_platform.plugins import cli_extensions
from byoc_platform.settings import Settings
from byoc_platform.stack.processes import is_running

app = typer.Typer(
    help="byoc-platform: usage metering and enforcement runtime, in your own cloud.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _stack_state(settings: Settings) -> dict[str, Any]:
    try:
        state = json.loads(settings.stack_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("components", {}), dict):
        console.print(f"[yellow]ignoring {settings.stack_file}: not a stack state[/yellow]")
        return {}
    return state


def _supervisor_alive(state: dict[str, Any]) -> bool:
    return is_running(state.get("supervisor_pid"), state.get("supervisor_start"))


def _component_alive(info: Any) -> bool:
    return isinstance(info, dict) and is_running(info.get("pid"), info.get("pid_start"))


def _endpoint_table(settings: Settings, state: dict[str, Any]) -> Table:
    table = Table(title=f"byoc stack ({settings.data_dir})")
    table.add_column("component")
    table.add_column("endpoint")
    table.add_column("pid")
    for name, info in state.get("components", {}).items():
        table.add_row(name, info["endpoint"], str(info["pid"]))
    return table


@app.command()
def up(
    data_dir: DataDir = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Start only these components (repeatable), in stack order."),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            help="Restart a component that dies (default); --no-restart leaves it "
            "down for inspection while the rest keeps running."
        ),
    ] = True,
) -> None:
    """Start the whole local stack in the foreground (Ctrl-C or `byoc down` stops it)."""
    from byoc_platform.stack.bootstrap import ensure_api_key
    from byoc_platform.stack.components import BY_NAME
    from byoc_platform.stack.supervisor import ComponentFailed, Supervisor

    settings = load_settings(data_dir, console)
    logs.configure("supervisor", settings.log_level)
    state = _stack_state(settings)
    if _supervisor_alive(state):
        console.print(
            f"[red]a stack is already running from {settings.data_dir} "
            f"(supervisor pid {state['supervisor_pid']}).[/red] See `byoc status`; stop it "
            "with `byoc down`."
        )
        raise typer.Exit(1)
    started = time.monotonic()
    unknown = sorted(set(only or []) - set(BY_NAME))
    if unknown:
        console.print(
            f"[red]unknown component(s) for --only: {', '.join(unknown)}[/red]; "
            f"known: {', '.join(BY_NAME)}"
        )
        raise typer.Exit(2)
    supervisor = Supervisor(
        settings,
        only,
        restart=restart,
        on_event=lambda m: console.print(f"  [{time.monotonic() - started:6.1f}s] {m}"),
    )
    console.print(f"starting the byoc stack in {settings.data_dir} ...")
    try:
        supervisor.start()
    except ComponentFailed as exc:
        console.print(f"[red]stack failed to start: {exc}[/red]")
        raise typer.Exit(1) from exc
    key = ensure_api_key(settings)
    console.print(_endpoint_table(settings, _stack_state(settings)))
    console.print(
        f"healthy in {time.monotonic() - started:.1f}s. Environment {settings.environment!r}, "
        f"API key in {settings.stack_file} (X-API-KEY: {key[:9]}...). Ctrl-C to stop."
    )
    try:
        supervisor.run_forever()
    except ComponentFailed as exc:
        console.print(f"[red]stack stopped: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print("stack stopped")


@app.command()
def down(
    data_dir: DataDir = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop.")] = 120.0,
) -> None:
    """Stop a running stack (every child process; data is kept)."""
    settings = load_settings(data_dir, console)
    state = _stack_state(settings)
    pid = state.get("supervisor_pid")
    running = _supervisor_alive(state)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _supervisor_alive(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _supervisor_alive(state):
            console.print(f"[red]supervisor {pid} did not stop in {timeout:.0f}s[/red]")
            raise typer.Exit(1)
    # Children of a supervisor that was killed outright (PDEATHSIG should have ended them).
    # Only processes that are still the recorded ones: their PIDs may belong to others now.
    leftovers = [
        (name, info["pid"])
        for name, info in state.get("components", {}).items()
        if _component_alive(info)
    ]
    for name, child in leftovers:
        console.print(f"stopping leftover {name} (pid {child})")
        try:
            os.killpg(child, signal.SIGTERM)
        except ProcessLookupError:
            continue
    if not running and not leftovers:
        stale = f" (stale state of supervisor pid {pid})" if pid else ""
        console.print(f"no stack is running{stale}")
        return
    console.print("stack stopped")


@app.command()
def status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each component: pid, ports, health, restarts and log file."""
    from byoc_platform.stack.components import BY_NAME

    settings = load_settings(data_dir, console)
    state = _stack_state(settings)
    if not state.get("components"):
        console.print(f"no stack has run from {settings.data_dir}")
        raise typer.Exit(1)
    settings = running_stack_settings(settings)  # probe the ports the stack really uses
    rows = []
    for name, info in state["components"].items():
        alive = _component_alive(info)
        health = "down"
        if alive:
            try:
                BY_NAME[name].probe(settings)
                health = "healthy"
            except Exception as exc:
                health = f"unhealthy ({type(exc).__name__})"
        rows.append(
            {
                "component": name,
                "pid": info.get("pid") if alive else None,
                "ports": info.get("ports"),
                "health": health,
                "log": info.get("log"),
                "restarts": info.get("restarts", 0),
            }
        )
    supervisor_alive = _supervisor_alive(state)
    if as_json:
        print(
            json.dumps(
                {
                    "supervisor_pid": state.get("supervisor_pid") if supervisor_alive else None,
                    "components": rows,
                },
                indent=2,
            )
        )
    else:
        table = Table(
            title=f"byoc stack ({settings.data_dir}), supervisor "
            f"{'pid ' + str(state.get('supervisor_pid')) if supervisor_alive else 'down'}"
        )
        for col in ("component", "pid", "ports", "health", "restarts", "log"):
            table.add_column(col)
        for row in rows:
            ports = ", ".join(f"{k} {v}" for k, v in (row["ports"] or {}).items())
            color = "green" if row["health"] == "healthy" else "red"
            table.add_row(
                row["component"],
                str(row["pid"] or "-"),
                ports,
                f"[{color}]{row['health']}[/{color}]",
                str(row["restarts"]),
                row["log"],
            )
        Console().print(table)
    if not all(r["health"] == "healthy" for r in rows):
        raise typer.Exit(1)


@app.command()
def serve(
    role: Annotated[
        str, typer.Option(help="Which runtime components to serve: all, ingest or enforcement.")
    ] = "all",
    data_dir: DataDir = None,
) -> None:
    """Run the runtime API (REST on ports.api; SidecarService gRPC on ports.grpc)."""
    from byoc_platform.plugins import StartupError
    from byoc_platform.runtime_server import serve as run

    if role not in ("all", "ingest", "enforcement"):
        console.print(f"[red]unknown role {role!r}: use all, ingest or enforcement[/red]")
        raise typer.Exit(2)
    settings = load_settings(data_dir, console)
    logs.configure("api", settings.log_level)
    try:
        run(settings, role)
    except StartupError as exc:
        console.print(f"[red]cannot start the runtime API: {exc}[/red]")
        raise typer.Exit(1) from exc


keys_app = typer.Typer(help="Manage API keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    environment: Annotated[str, typer.Option(help="The environment the key belongs to.")],
    label: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from rich.markup import escape

    from byoc_platform.auth import KeyStore
    from byoc_platform.environments import environment_problem

    problem = environment_problem(environment)
    if problem is not None:
        console.print(f"[red]--environment: {escape(problem)}[/red]")
        raise typer.Exit(2)
    settings = load_settings(data_dir, console)
    assert settings.api_keys_file is not None
    print(KeyStore(settings.api_keys_file).create(environment, label))


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List key ids and environments (never the keys)."""
    from byoc_platform.auth import KeyStore

    settings = load_settings(data_dir, console)
    assert settings.api_keys_file is not None
    for record in KeyStore(settings.api_keys_file).records():
        print(f"{record.key_id}\t{record.environment}\t{record.created_at}\t{record.label}")


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke a key by its id."""
    from byoc_platform.auth import KeyStore

    settings = load_settings(data_dir, console)
    assert settings.api_keys_file is not None
    if not KeyStore(settings.api_keys_file).revoke(key_id):
        console.print(f"[red]no key with id {key_id}[/red]")
        raise typer.Exit(1)


for _extension in cli_extensions().values():
    app.add_typer(_extension)  # unnamed: its commands join the top level


def main() -> None:
    from byoc_platform.auth import KeyFileError

    try:
        app(prog_name="byoc")
    except (OSError, KeyFileError) as exc:
        # A data directory that is a file, read-only or not permitted, a full disk, a key
        # file edited by hand: the user's to mend, and the message names the path.
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
