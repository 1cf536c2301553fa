"""What the shape of the consumption path allows on this machine, whatever the code inside it.

The runtime answers a consumption after a second process (the ledger writer) committed it, so
the paced p99 depends on the CPU each process spends per consumption and on how the two (and
the load generator) share the cores. This harness replaces the code by stand-ins that spend a
chosen CPU time and nothing else, and drives them with the same 64 paced clients as
``bench/enforcement.py`` (bench/consume_load.py), so it shows which budgets could meet
"5,000/s with p99 < 5 ms" at all:

- the server: a uvloop HTTP/1.1 responder in its own process; per request it parses the head
  and the JSON body, then busy-spends ``runtime`` us (two thirds before the hand-off, a third
  when answering, as the runtime does);
- with ``writer``: the request ids of one loop iteration go in one write to a child process
  over a pipe (the LedgerWriter shape); the child spends ``writer`` us per id, with ``fsync``
  appends 200 bytes per id to a journal file and fdatasyncs it once per batch, and echoes the
  ids; the server answers each request when its id comes back;
- with ``background``: the child also passes the ids to a third process at nice 19 that spends
  ``background`` us per id (work moved off the answer path, e.g. writing rows later).

    .venv/bin/python bench/consume_shape.py --rate 5000 --rounds 2 \\
        --shape runtime=0 --shape runtime=110,writer=80,fsync --shape runtime=110,writer=20,fsync

The LAST line is one JSON object: per shape and round, the throughput, p50/p90/p99/max of the
latency from each request's scheduled time, and the CPU us per request of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop
from consume_load import consume_clients, pct, quiet_gc
from proc_cpu import cpu_seconds

# A consumption's answer, about the size of the runtime's.
BODY = (
    b'{"id":"c-0123456789abcdef","customerId":"customer-acme","currencyId":"credits",'
    b'"amount":1,"resourceId":null,"idempotencyKey":"b-1-1-1",'
    b'"createdAt":"2026-11-22T04:50:00.000Z"}'
)
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
_ID = struct.Struct(">I")


def spend(seconds: float) -> None:
    """Busy CPU, like Python work (holds the core, no system calls)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def parse_shape(text: str) -> dict[str, Any]:
    shape: dict[str, Any] = {"runtime": 0.0, "writer": None, "fsync": False, "background": None}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name == "fsync" and not value:
            shape["fsync"] = True
        elif name in ("runtime", "writer", "background") and value:
            shape[name] = float(value)
        else:
            raise argparse.ArgumentTypeError(
                f"bad shape part {part!r}: use runtime=US, writer=US, fsync, background=US"
            )
    if shape["writer"] is None and (shape["fsync"] or shape["background"] is not None):
        raise argparse.ArgumentTypeError("fsync and background need a writer")
    return shape


# --- the stand-in processes ------------------------------------------------------------------


def run_background(us: float) -> None:
    os.nice(19)
    while data := os.read(0, 1 << 20):
        for _ in range(len(data) // _ID.size):
            spend(us / 1e6)


def run_writer(us: float, journal: str | None, background: float | None) -> None:
    behind = None
    if background is not None:
        behind = subprocess.Popen(
            [sys.executable, __file__, "background", str(background)], stdin=subprocess.PIPE
        )
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if journal else None
    pending = b""
    while data := os.read(0, 1 << 20):
        data = pending + data
        whole = len(data) - len(data) % _ID.size
        ids, pending = data[:whole], data[whole:]
        count = whole // _ID.size
        for _ in range(count):
            spend(us / 1e6)
        if fd is not None:
            os.write(fd, b"x" * (200 * count))
            os.fdatasync(fd)
        os.write(1, ids)
        if behind is not None:
            assert behind.stdin is not None
            behind.stdin.write(ids)
            behind.stdin.flush()


def run_server(port: int, shape: dict[str, Any], journal: str) -> None:
    before, after = shape["runtime"] * 2 / 3 / 1e6, shape["runtime"] / 3 / 1e6

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Transport] = {}
        outbox: list[int] = []
        next_id = iter(range(1, 1 << 31))
        child = None
        if shape["writer"] is not None:
            argv = [sys.executable, __file__, "writer", str(shape["writer"])]
            argv += [journal if shape["fsync"] else "-", str(shape["background"] or "-")]
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert child.stdin is not None and child.stdout is not None
            to_child, from_child = child.stdin.fileno(), child.stdout.fileno()
            os.set_blocking(from_child, False)
            rest = bytearray()

            def answers() -> None:
                rest.extend(os.read(from_child, 1 << 20))
                whole = len(rest) - len(rest) % _ID.size
                for (call,) in _ID.iter_unpack(rest[:whole]):
                    spend(after)
                    waiting.pop(call).write(ANSWER)
                del rest[:whole]

            loop.add_reader(from_child, answers)

        def flush() -> None:
            os.write(to_child, b"".join(_ID.pack(call) for call in outbox))
            outbox.clear()

        class Http(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # uvloop's transports are not asyncio.Transport subclasses: cast, not check.
                self.transport, self.buffer = cast(asyncio.Transport, transport), b""

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                    head = self.buffer[:end].lower()
                    at = head.find(b"content-length:")
                    length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                    if len(self.buffer) < end + 4 + length:
                        return
                    json.loads(self.buffer[end + 4 : end + 4 + length])
                    self.buffer = self.buffer[end + 4 + length :]
                    spend(before)
                    if child is None:
                        spend(after)
                        self.transport.write(ANSWER)
                        continue
                    call = next(next_id)
                    waiting[call] = self.transport
                    if not outbox:
                        loop.call_soon(flush)
                    outbox.append(call)

        await loop.create_server(Http, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


# --- the measurement -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def measure(shape: dict[str, Any], rate: float, seconds: float, base: Path) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, __file__, "server", str(port), json.dumps(shape), str(base / "j")]
    server = subprocess.Popen(argv)
    body = {"amount": 1, "currencyId": "credits", "customerId": "customer-acme"}
    try:
        deadline = time.monotonic() + 30
        while True:  # up once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the stand-in server did not start") from None
                time.sleep(0.1)
        uvloop.run(consume_clients(port, "-", 64, 2, body, stop_on_refusal=False))  # warm-up
        pids = [server.pid, *children(server.pid)]
        pids += [p for pid in pids[1:] for p in children(pid)]
        with quiet_gc():
            cpu0 = [cpu_seconds(pid) for pid in pids]
            start = time.monotonic()
            latencies, statuses = uvloop.run(
                consume_clients(port, "-", 64, seconds, body, stop_on_refusal=False, rate=rate)
            )
            elapsed = time.monotonic() - start
        spent = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        cpu = [seconds_ / len(latencies) * 1e6 for seconds_ in spent]
    finally:
        server.kill()
        server.wait()
    names = ["server_cpu_us", "writer_cpu_us", "background_cpu_us"]
    return {
        "per_s": round(statuses.get(200, 0) / elapsed),
        "p50_ms": round(pct(latencies, 0.50), 2),
        "p90_ms": round(pct(latencies, 0.90), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        **{name: round(us, 1) for name, us in zip(names, cpu, strict=False)},
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("server", "writer", "background"):
        role, args = sys.argv[1], sys.argv[2:]
        if role == "server":
            run_server(int(args[0]), json.loads(args[1]), args[2])
        elif role == "writer":
            journal = None if args[1] == "-" else args[1]
            run_writer(float(args[0]), journal, None if args[2] == "-" else float(args[2]))
        else:
            run_background(float(args[0]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="offered requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="shapes alternate in each round")
    parser.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        help="e.g. runtime=110,writer=80,fsync (us of CPU per request); repeatable",
    )
    args = parser.parse_args()
    shapes = args.shape or [parse_shape("runtime=110,writer=80,fsync")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-consume-shape-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for shape in shapes:
                figures = measure(shape, args.rate, args.seconds, Path(tmp))
                row = {"round": round_, **shape, "load": round(os.getloadavg()[0], 2), **figures}
                print(json.dumps(row), flush=True)
                results.append(row)
    print(json.dumps({"rate": args.rate, "clients": 64, "results": results}))


if __name__ == "__main__":
    main()
