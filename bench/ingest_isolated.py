"""Ingestion alone: KMS + S3 + Tansu (s3://) + `byoc serve --role ingest`, then bench/ingest.py.

Separates the ingestion path from the rest of the stack (stream processor, warehouse,
enforcement counters, Dagster) that `byoc up` co-locates. Starts everything on free loopback
ports in a temporary directory, runs the load generator once per --connections value, and
reports per run the bench figures plus the CPU seconds per second used by the API process,
the broker and SeaweedFS. The LAST line printed is one JSON object (the list of runs).

    .venv/bin/python bench/ingest_isolated.py --duration 15 --connections 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proc_cpu import cpu_seconds  # noqa: E402

from byoc_platform.settings import Ports, Settings  # noqa: E402
from byoc_platform.stack.bootstrap import ensure_api_key  # noqa: E402
from byoc_platform.stack.supervisor import Supervisor  # noqa: E402


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def start_api(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_")}
    env["BYOC_DATA_DIR"] = str(settings.data_dir)
    for name, port in settings.ports.model_dump().items():
        env[f"BYOC_PORTS__{name.upper()}"] = str(port)
    url = f"http://127.0.0.1:{settings.ports.api}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "byoc_platform", "serve", "--role", "ingest"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"runtime API did not get ready; see {log}")
        time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument(
        "--storage",
        choices=["s3", "memory"],
        default="s3",
        help="Tansu storage engine (memory:// isolates the S3 round trips; not durable)",
    )
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    names = list(Ports.model_fields)
    settings = Settings(
        data_dir=data, ports=Ports(**dict(zip(names, free_ports(len(names)), strict=True)))
    )
    settings.kafka.storage = args.storage
    supervisor = Supervisor(settings, ["kms", "s3", "kafka"], restart=False)
    supervisor.start()
    runs: list[dict[str, Any]] = []
    try:
        key = ensure_api_key(settings)
        api, url = start_api(settings, data / "api.log")
        try:
            pids = {
                "api": api.pid,
                "kafka": supervisor.running["kafka"].process.pid,
                "s3": supervisor.running["s3"].process.pid,
            }
            for connections in args.connections:
                before = {n: cpu_seconds(p) for n, p in pids.items()}
                started = time.monotonic()
                out = subprocess.run(
                    [
                        sys.executable,
                        str(REPO / "bench" / "ingest.py"),
                        "--url",
                        url,
                        "--api-key",
                        key,
                        "--duration",
                        str(args.duration),
                        "--connections",
                        str(connections),
                        "--customers",
                        str(args.customers),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                elapsed = time.monotonic() - started
                run = json.loads(out.strip().splitlines()[-1])
                run["cpu_s_per_s"] = {
                    n: round((cpu_seconds(p) - before[n]) / elapsed, 2) for n, p in pids.items()
                }
                run["load_avg_1m"] = round(os.getloadavg()[0], 1)
                print(json.dumps(run), flush=True)
                runs.append(run)
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(60)
    finally:
        supervisor.stop()
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
