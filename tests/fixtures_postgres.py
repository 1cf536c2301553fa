"""A throwaway PostgreSQL server for tests and benchmarks (real server, loopback only).

``postgres_server()`` initdb's a cluster in a fresh temp dir, starts ``postgres`` on a free
127.0.0.1 port with its unix socket inside that dir, waits until it accepts connections, yields
a SQLAlchemy URL (``postgresql+psycopg://byoc@127.0.0.1:PORT/postgres``, trust auth), and stops
the server by its PID (immediate shutdown, then kill) and deletes the dir.

Binaries: ``initdb``/``postgres`` on PATH, else the newest ``/usr/lib/postgresql/*/bin`` (where
Debian's ``apt-get install postgresql`` puts them; they are not on PATH there).

Root: postgres refuses to run as root. When the tests run as root, the server runs as the
unprivileged ``postgres`` system user that the Debian package creates (``subprocess`` switches
user in the child, so the PID we hold is the postmaster itself); the temp dir is chown'ed to it.
Not root: it runs as the current user.

``fresh_database(url)`` creates an empty database on that server and returns its URL, so each
test can start from clean books.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

SERVICE_USER = "postgres"
SUPERUSER = "byoc"


def find_postgres_bin() -> Path:
    """The directory holding initdb and postgres."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found (initdb/postgres). On Debian/Ubuntu: "
            "apt-get install -y postgresql  (binaries land in /usr/lib/postgresql/<ver>/bin)"
        )
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _service_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no {SERVICE_USER!r} user to run PostgreSQL as "
            "(installing the Debian package postgresql creates it)"
        ) from None
    return entry.pw_uid, entry.pw_gid


@contextmanager
def postgres_server(
    *, settings: dict[str, str] | None = None, ready_timeout_s: float = 60.0
) -> Iterator[str]:
    bin_dir = find_postgres_bin()
    ids = _service_user()
    base = Path(tempfile.mkdtemp(prefix="byoc-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if ids is not None:
        for path in (base, sock):
            os.chown(path, *ids)
    as_user: dict[str, object] = {}
    if ids is not None:
        as_user = {"user": ids[0], "group": ids[1], "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "HOME": str(base)}
    proc: subprocess.Popen[bytes] | None = None
    log = base / "postgres.log"
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
            check=True,
            capture_output=True,
            env=env,
            cwd=base,
            **as_user,  # type: ignore[arg-type]
        )
        port = _free_port()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(sock),
            "max_connections": "300",
            "shared_buffers": "128MB",
            **(settings or {}),
        }
        args = [str(bin_dir / "postgres"), "-D", str(data)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=base,
                **as_user,  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {proc.returncode}: {log.read_text()}")
            try:
                psycopg.connect(
                    host="127.0.0.1",
                    port=port,
                    user=SUPERUSER,
                    dbname="postgres",
                    connect_timeout=2,
                ).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready: {log.read_text()}") from None
                time.sleep(0.1)
        yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown: the cluster is thrown away
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(server_url: str, template: str | None = None) -> str:
    """Create a database on the server (empty, or a copy of ``template``, a database name whose
    schema is already in place: much faster than creating the schema again) and return its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        suffix = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{suffix}')  # type: ignore[arg-type]
    return server_url.rsplit("/", 1)[0] + f"/{name}"
