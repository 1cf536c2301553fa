"""Command line of the local control plane.

    python -m byoc_platform.control_plane [serve] --host 127.0.0.1 --port PORT --data-dir DIR
                                          [--seed FILE]
    python -m byoc_platform.control_plane apply --data-dir DIR FILE

``serve`` binds the port first (so a port already in use fails at once, exit code 1, with a log
line saying so), opens ``DIR/control_plane.db``, loads the seed if this store was never seeded,
then serves until SIGINT/SIGTERM. The API key and default environment come from Settings
(``BYOC_CONTROL_PLANE__API_KEY``, ``BYOC_ENVIRONMENT``). Logs are JSON lines on stderr.

``apply`` writes an entities file (format in seed.py) straight into the store, in one
transaction, whether or not the server is running; it prints a JSON summary on stdout.
Exit codes: 0 ok, 1 runtime failure (port in use), 2 bad arguments or bad input file.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from byoc_platform.control_plane.app import create_app
from byoc_platform.control_plane.seed import DEFAULT_SEED, EntityError, apply_file, load_seed
from byoc_platform.control_plane.store import Store
from byoc_platform.logs import configure as configure_logs
from byoc_platform.settings import Settings

log = logging.getLogger("byoc_platform.control_plane")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
COMPONENT = "control_plane"


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM/SIGINT after shutting down, which kills the process before
        # the store is closed and makes a clean stop exit with -15; we just stop and return.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """Bind and listen ourselves, so 'port in use' is an error we can word clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR lets a restart reuse a port whose old connections sit in TIME_WAIT; it does
    # not let two listeners share a port on Linux.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _parser(settings: Settings) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    default_dir = settings.data_dir / "control_plane"
    serve = argparse.ArgumentParser(
        prog="python -m byoc_platform.control_plane", description="Local Stigg Cloud stand-in."
    )
    serve.add_argument("--host", default=settings.host)
    serve.add_argument("--port", type=int, default=settings.ports.control_plane)
    serve.add_argument("--data-dir", type=Path, default=default_dir)
    serve.add_argument("--seed", type=Path, default=None, help="seed YAML (first start only)")
    apply = argparse.ArgumentParser(
        prog="python -m byoc_platform.control_plane apply",
        description="Apply a YAML entities file to the store directly (server up or down).",
    )
    apply.add_argument("--data-dir", type=Path, default=default_dir)
    apply.add_argument("file", type=Path)
    return serve, apply


def serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        log.error(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            " (is another process already using this port?)",
            extra={"fields": {"host": args.host, "port": args.port, "errno": exc.errno}},
        )
        return 1
    seed_file = args.seed or settings.control_plane.seed_file or DEFAULT_SEED
    store = Store.open(args.data_dir)
    try:
        load_seed(store, seed_file)
    except (EntityError, OSError) as exc:
        log.error(f"cannot load seed: {exc}", extra={"fields": {"seed": str(seed_file)}})
        store.close()
        sock.close()
        return 2
    app = create_app(
        store, api_key=settings.control_plane.api_key, default_environment=settings.environment
    )
    config = uvicorn.Config(
        app, log_config=None, lifespan="off", timeout_graceful_shutdown=5, server_header=False
    )
    log.info(
        "control plane starting",
        extra={
            "fields": {
                "host": args.host,
                "port": args.port,
                "database": str(store.path),
                "environment": settings.environment,
            }
        },
    )
    try:
        _Server(config).run(sockets=[sock])
    finally:
        store.close()
        sock.close()
    log.info("control plane stopped")
    return 0


def apply(args: argparse.Namespace) -> int:
    store = Store.open(args.data_dir)
    try:
        changes = apply_file(store, args.file)
    except (EntityError, OSError) as exc:
        log.error(f"cannot apply {args.file}: {exc}")
        return 2
    finally:
        store.close()
    summary: dict[str, dict[str, int]] = {}
    for change in changes:
        env = summary.setdefault(change.environment, {"changes": 0, "firstSeq": change.seq})
        env["changes"] += 1
        env["lastSeq"] = change.seq
    sys.stdout.write(json.dumps({"applied": len(changes), "environments": summary}) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        configure_logs(COMPONENT, "INFO")
        log.error(f"invalid settings: {exc}")
        return 2
    configure_logs(COMPONENT, settings.log_level)
    serve_parser, apply_parser = _parser(settings)
    if argv[:1] == ["apply"]:
        return apply(apply_parser.parse_args(argv[1:]))
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    return serve(serve_parser.parse_args(argv), settings)


if __name__ == "__main__":
    sys.exit(main())
