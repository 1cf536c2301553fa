"""Enforcement benchmark: entitlement checks (in process and over gRPC) and credit consumption.

Starts its own control-plane stand-in (default seed) and ``byoc serve --role enforcement`` as
subprocesses on free loopback ports, in a temporary directory, then measures:

- ``engine_check_p99_us``: ``EntitlementEngine.check`` of a metered feature, in this process,
  over state synced from the same control plane (no I/O on that path);
- ``grpc_check_p50_us`` / ``grpc_check_p99_us``: GetMeteredEntitlement through the official
  stigg-sidecar-sdk stub over loopback h2c, open loop at a fixed rate (default 2,000 checks/s):
  each call is started on its schedule whether or not earlier ones finished;
- ``consume_per_s`` / ``consume_p99_ms``: 64 concurrent keep-alive clients POSTing
  /api/v1/credits/consumption (1 credit, unique idempotency keys) against ONE wallet;
- ``rest_check_*``: 32 keep-alive clients GET the REST entitlement check (the HTTP stack's
  own cost: auth, routing, a check without I/O);
- ``overdraft``: 64 clients consume from a wallet of exactly N credits until refused;
  credits granted beyond N (counted from 200 answers and from the ledger) must be 0.

    .venv/bin/python bench/enforcement.py [--rate 2000] [--grpc-seconds 10] [--consume-seconds 10]

The client sides are cheap on purpose (they share the 2 cores with the server): the consume
clients are raw asyncio streams with pre-encoded requests. The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvloop  # noqa: E402  (the REST load clients: less CPU per request than asyncio's loop)
from consume_load import consume_clients, pct, quiet_gc, read_response  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

from byoc_platform.auth import KeyStore  # noqa: E402
from byoc_platform.control_plane.client import ControlPlaneClient  # noqa: E402

ENV = "development"
CP_KEY = "bench-control-plane-key"
CUSTOMER, FEATURE = "customer-acme", "feature-api-calls"  # default seed: plan-pro, metered
GRPC_WARMUP = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


class Stack:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.cp_port, self.api_port, self.grpc_port = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.env.update(
            {
                "BYOC_DATA_DIR": str(base / "runtime"),
                "BYOC_PORTS__API": str(self.api_port),
                "BYOC_PORTS__GRPC": str(self.grpc_port),
                "BYOC_PORTS__CONTROL_PLANE": str(self.cp_port),
                "BYOC_CONTROL_PLANE__API_KEY": CP_KEY,
                "BYOC_ENFORCEMENT__CONSUME_USAGE": "false",
                "BYOC_ENFORCEMENT__REBUILD_FROM_WAREHOUSE": "false",
                "BYOC_LOG_LEVEL": "WARNING",
            }
        )

    def start(self) -> str:
        logs = (self.base / "logs.txt").open("ab")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "byoc_platform.control_plane",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.cp_port),
                    "--data-dir",
                    str(self.base / "cp"),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=logs,
                stderr=logs,
            )
        )
        wait_http(f"http://127.0.0.1:{self.cp_port}/healthz")
        keys = KeyStore(self.base / "runtime" / "auth" / "api_keys.json")
        api_key = keys.create(ENV, "bench")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "byoc_platform", "serve", "--role", "enforcement"],
                cwd=ROOT,
                env=self.env,
                stdout=logs,
                stderr=logs,
            )
        )
        wait_http(f"http://127.0.0.1:{self.api_port}/readyz")
        return api_key

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --- in-process engine ------------------------------------------------------------------


def engine_bench(cp_url: str, base: Path, n: int) -> dict[str, float]:
    from enforcement.counters import UsageCounters
    from enforcement.engine import EntitlementEngine
    from enforcement.state import LocalState
    from enforcement.store import Store

    state = LocalState()
    with ControlPlaneClient(cp_url, CP_KEY) as client:
        for change in client.iter_changes(ENV):
            state.apply(ENV, change.kind, change.op, change.id, change.data, time.time())
    counters = UsageCounters(Store(f"sqlite:///{base / 'engine.db'}"), state)
    feature = state.env(ENV).features[FEATURE]
    counters.report(ENV, CUSTOMER, None, feature, 10, "DELTA")
    engine = EntitlementEngine(state, counters)
    check = engine.check
    clock = time.perf_counter_ns
    for _ in range(2000):  # warm caches (views, windows)
        check(ENV, CUSTOMER, FEATURE, requested_usage=1)
    samples = []
    for _ in range(n):
        t0 = clock()
        decision = check(ENV, CUSTOMER, FEATURE, requested_usage=1)
        samples.append((clock() - t0) / 1000)
    assert decision.has_access and decision.current_usage == 10
    return {
        "engine_check_p50_us": round(pct(samples, 0.50), 2),
        "engine_check_p99_us": round(pct(samples, 0.99), 2),
        "engine_checks": n,
    }


# --- gRPC over loopback -------------------------------------------------------------------


async def grpc_bench(port: int, rate: float, seconds: float) -> dict[str, float]:
    """Open loop at ``rate``: a call starts on its schedule whatever earlier calls do.

    The load generator is grpcio's C-core client sending the request pre-serialised (with
    the SDK's own message class) and reading raw bytes, so the figures are the server's and
    the loopback's, not the client's Python cost. In-flight calls are capped; a call that
    cannot start on time because of the cap is counted as ``grpc_late_starts``.
    """
    import grpc
    from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

    request = bytes(
        pb.GetMeteredEntitlementRequest(
            customer_id=CUSTOMER,
            feature_id=FEATURE,
            options=pb.MeteredEntitlementOptions(requested_usage=1),
        )
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/stigg.sidecar.v1.SidecarService/GetMeteredEntitlement")
    for _ in range(GRPC_WARMUP):  # connection, server caches, warm-up
        answer = await call(request)
    assert pb.GetMeteredEntitlementResponse().parse(answer).has_access
    latencies: list[float] = []
    errors = late = 0
    in_flight = asyncio.Semaphore(256)

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter_ns()
        try:
            await call(request)
        except grpc.RpcError:
            errors += 1
        else:
            latencies.append((time.perf_counter_ns() - t0) / 1000)
        finally:
            in_flight.release()

    total = int(rate * seconds)
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    tasks = []
    with quiet_gc():
        start = loop.time()
        for i in range(total):
            due = start + i * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight.locked():
                late += 1
            await in_flight.acquire()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    await channel.close()
    return {
        "grpcio_client_check_p50_us": round(pct(latencies, 0.50), 1),
        "grpcio_client_check_p99_us": round(pct(latencies, 0.99), 1),
        "grpcio_client_check_max_us": round(max(latencies), 1),
        "grpcio_client_rate_per_s": round(len(latencies) / elapsed, 1),
        "grpcio_client_checks": len(latencies),
        "grpcio_client_errors": errors,
        "grpcio_client_late_starts": late,
    }


class LeanH2Client:
    """A minimal HTTP/2 gRPC client for the load generator: one connection, pre-encoded
    frames, a reader task. Its per-call cost is a few tens of microseconds of Python, so the
    latencies are the server's and the loopback's, not the client's (grpcio's asyncio client
    costs ~200 us of Python per call and adds its own queueing at 2,000 calls/s).

    It behaves like gRPC clients do on the wire: HPACK with a dynamic table (the first request's
    headers are indexed, later ones are all "indexed field" bytes), every response header block
    decoded (a constant literal-only block is decoded once), SETTINGS and PING acknowledged.
    """

    def __init__(self, path: str) -> None:
        import hpack

        self.path = path
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "byoc-bench"),
        ]
        self.next_id = 1
        self.waiting: dict[int, tuple[float, asyncio.Future[bool]]] = {}
        self.known_blocks: dict[bytes, list[tuple[str, str]]] = {}
        self.max_streams = 100

    @staticmethod
    def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
        return (
            len(payload).to_bytes(3, "big")
            + bytes((kind, flags))
            + stream_id.to_bytes(4, "big")
            + payload
        )

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        big = 1 << 30
        settings = (4).to_bytes(2, "big") + big.to_bytes(4, "big")  # INITIAL_WINDOW_SIZE
        self.writer.write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + self.frame(4, 0, 0, settings)
            + self.frame(8, 0, 0, big.to_bytes(4, "big"))
        )
        self.reading = asyncio.ensure_future(self.read_loop())

    def headers_block(self, block: bytes) -> list[tuple[str, str]]:
        """Decode a header block; blocks that leave the HPACK table as it was are remembered
        (the server's answers repeat), and forgotten whenever the table changes."""
        known = self.known_blocks.get(block)
        if known is not None:
            return known
        table = self.decoder.header_table
        before = tuple(table.dynamic_entries)
        decoded = [(str(k), str(v)) for k, v in self.decoder.decode(block, raw=False)]
        if tuple(table.dynamic_entries) == before:
            self.known_blocks[block] = decoded
        else:
            self.known_blocks.clear()
        return decoded

    async def read_loop(self) -> None:
        reader, writer = self.reader, self.writer
        while True:
            head = await reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = await reader.readexactly(length) if length else b""
            if kind == 4 and not flags & 1:  # SETTINGS
                for i in range(0, len(payload), 6):
                    if int.from_bytes(payload[i : i + 2], "big") == 3:
                        self.max_streams = int.from_bytes(payload[i + 2 : i + 6], "big")
                writer.write(self.frame(4, 1, 0, b""))
            elif kind == 6 and not flags & 1:  # PING
                writer.write(self.frame(6, 1, 0, payload))
            elif kind == 1:  # HEADERS (no CONTINUATION from this server's small blocks)
                block = payload
                if flags & 0x8:
                    block = block[1 : len(block) - block[0]]
                if flags & 0x20:
                    block = block[5:]
                headers = self.headers_block(block)
                if flags & 1:
                    ok = ("grpc-status", "0") in headers
                    self.done(stream_id, ok)
            elif kind == 3:  # RST_STREAM
                self.done(stream_id, False)
            elif kind == 7:  # GOAWAY
                raise RuntimeError(f"server sent GOAWAY {payload[4:8].hex()}")

    def done(self, stream_id: int, ok: bool) -> None:
        entry = self.waiting.pop(stream_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(ok)

    def call(self, message: bytes) -> asyncio.Future[bool]:
        stream_id = self.next_id
        self.next_id += 2
        block = self.encoder.encode(self.headers)
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting[stream_id] = (time.perf_counter(), future)
        self.writer.write(
            self.frame(1, 0x4, stream_id, block) + self.frame(0, 0x1, stream_id, body)
        )
        return future

    async def close(self) -> None:
        self.reading.cancel()
        self.writer.close()


async def grpc_bench_lean(port: int, rate: float, seconds: float) -> dict[str, float]:
    """Open loop at ``rate`` with :class:`LeanH2Client` (see grpc_bench for the schedule)."""
    from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

    request = bytes(
        pb.GetMeteredEntitlementRequest(
            customer_id=CUSTOMER,
            feature_id=FEATURE,
            options=pb.MeteredEntitlementOptions(requested_usage=1),
        )
    )
    client = LeanH2Client("/stigg.sidecar.v1.SidecarService/GetMeteredEntitlement")
    await client.connect(port)
    for _ in range(GRPC_WARMUP):
        assert await client.call(request)
    latencies: list[float] = []
    errors = late = 0
    in_flight = asyncio.Semaphore(min(256, client.max_streams))

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter_ns()
        try:
            ok = await client.call(request)
        finally:
            in_flight.release()
        if ok:
            latencies.append((time.perf_counter_ns() - t0) / 1000)
        else:
            errors += 1

    total = int(rate * seconds)
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    tasks = []
    with quiet_gc():
        start = loop.time()
        for i in range(total):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight.locked():
                late += 1
            await in_flight.acquire()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    await client.close()
    return {
        "grpc_check_p50_us": round(pct(latencies, 0.50), 1),
        "grpc_check_p99_us": round(pct(latencies, 0.99), 1),
        "grpc_check_max_us": round(max(latencies), 1),
        "grpc_rate_per_s": round(len(latencies) / elapsed, 1),
        "grpc_target_rate_per_s": rate,
        "grpc_checks": len(latencies),
        "grpc_errors": errors,
        "grpc_late_starts": late,
    }


async def sdk_bench(port: int, calls: int) -> dict[str, float]:
    """Closed loop through the official stigg-sidecar-sdk client (its own cost included)."""
    from stigg_sidecar_sdk import Stigg
    from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as pb

    client = Stigg(
        pb.ApiConfig(api_key="unused"), remote_sidecar_host="127.0.0.1", remote_sidecar_port=port
    )
    request = pb.GetMeteredEntitlementRequest(
        customer_id=CUSTOMER,
        feature_id=FEATURE,
        options=pb.MeteredEntitlementOptions(requested_usage=1),
    )
    for _ in range(200):
        await client.get_metered_entitlement(request)
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        resp = await client.get_metered_entitlement(request)
        latencies.append((time.perf_counter_ns() - t0) / 1000)
    assert resp.has_access
    client.close()
    return {
        "sdk_check_p50_us": round(pct(latencies, 0.50), 1),
        "sdk_check_p99_us": round(pct(latencies, 0.99), 1),
        "sdk_checks": calls,
    }


# --- credit consumption over REST ------------------------------------------------------------


async def rest_check_clients(port: int, api_key: str, clients: int, seconds: float) -> list[float]:
    path = f"/api/v1/customers/{CUSTOMER}/entitlements/check?featureId={FEATURE}"
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: {api_key}\r\n\r\n".encode()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                assert await read_response(reader) == 200
                latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def grant(api: httpx.Client, customer: str, amount: float, resource: str | None = None) -> None:
    body: dict[str, Any] = {
        "amount": amount,
        "currencyId": "credits",
        "customerId": customer,
        "displayName": "bench",
        "grantType": "PAID",
        "priority": 0,
    }
    if resource:
        body["resourceId"] = resource
    resp = api.post("/api/v1/credits/grants", json=body)
    resp.raise_for_status()


def consume_bench(
    port: int,
    api_key: str,
    clients: int,
    seconds: float,
    exact: int,
    rate: float,
    cpu: Callable[[], float],
) -> dict[str, Any]:
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"X-API-KEY": api_key}, timeout=60
    )
    # Throughput: one big wallet (customer-level credits of customer-acme).
    grant(api, CUSTOMER, 10**9)
    body = {"amount": 1, "currencyId": "credits", "customerId": CUSTOMER}
    with quiet_gc():
        cpu0 = cpu()
        started = time.monotonic()
        latencies, statuses = uvloop.run(
            consume_clients(port, api_key, clients, seconds, body, stop_on_refusal=False)
        )
        elapsed = time.monotonic() - started
        closed_cpu = cpu() - cpu0
        # Paced: the same clients offering `rate` requests/s in all.
        cpu0 = cpu()
        started = time.monotonic()
        paced, paced_statuses = uvloop.run(
            consume_clients(port, api_key, clients, seconds, body, False, rate=rate)
        )
        paced_elapsed = time.monotonic() - started
        paced_cpu = cpu() - cpu0
    ok = statuses.get(200, 0)
    # Overdraft: a wallet of exactly `exact` credits (team-support of customer-initech).
    grant(api, "customer-initech", exact, "team-support")
    body = {
        "amount": 1,
        "currencyId": "credits",
        "customerId": "customer-initech",
        "resourceId": "team-support",
    }
    _, drain = uvloop.run(consume_clients(port, api_key, clients, None, body, stop_on_refusal=True))
    check = api.get(
        "/api/v1/customers/customer-initech/entitlements/check",
        params={"currencyId": "credits", "resourceId": "team-support"},
    ).json()
    api.close()
    granted_ok = drain.get(200, 0)
    ledger_used = check["data"]["currentUsage"]
    return {
        "consume_per_s": round(ok / elapsed, 1),
        "consume_server_cpu_us_per_op": round(closed_cpu / sum(statuses.values()) * 1e6, 1),
        "consume_paced_target_per_s": rate,
        "consume_paced_per_s": round(paced_statuses.get(200, 0) / paced_elapsed, 1),
        "consume_paced_p50_ms": round(pct(paced, 0.50), 2),
        "consume_paced_p99_ms": round(pct(paced, 0.99), 2),
        "consume_paced_non_200": sum(v for k, v in paced_statuses.items() if k != 200),
        "consume_paced_server_cpu_us_per_op": round(
            paced_cpu / max(1, sum(paced_statuses.values())) * 1e6, 1
        ),
        "consume_p50_ms": round(pct(latencies, 0.50), 2),
        "consume_p99_ms": round(pct(latencies, 0.99), 2),
        "consume_requests": sum(statuses.values()),
        "consume_non_200": sum(v for k, v in statuses.items() if k != 200),
        "consume_clients": clients,
        "overdraft": max(0, granted_ok - exact) + max(0, int(ledger_used) - exact),
        "overdraft_wallet": exact,
        "overdraft_consumed_200": granted_ok,
        "overdraft_refused": sum(v for k, v in drain.items() if k != 200),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--grpc-seconds", type=float, default=10.0)
    parser.add_argument("--engine-checks", type=int, default=200_000)
    parser.add_argument("--sdk-checks", type=int, default=3000)
    parser.add_argument("--consume-seconds", type=float, default=10.0)
    parser.add_argument("--consume-rate", type=float, default=5000.0)
    parser.add_argument("--rest-seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--overdraft-wallet", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
        "loadavg_before": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(prefix="bench-enforcement-") as tmp:
        stack = Stack(Path(tmp))
        try:
            api_key = stack.start()
            results.update(
                engine_bench(f"http://127.0.0.1:{stack.cp_port}", Path(tmp), args.engine_checks)
            )
            print(f"engine: {results}", flush=True)
            server = stack.procs[1].pid
            cpu0 = cpu_seconds(server)
            results.update(
                asyncio.run(grpc_bench_lean(stack.grpc_port, args.rate, args.grpc_seconds))
            )
            # CPU the server spent per check: its capacity, whatever else the machine runs.
            results["grpc_server_cpu_us_per_check"] = round(
                (cpu_seconds(server) - cpu0) / (results["grpc_checks"] + GRPC_WARMUP) * 1e6, 1
            )
            # The same load from grpcio's C-core client (its own cost included).
            cpu0 = cpu_seconds(server)
            results.update(asyncio.run(grpc_bench(stack.grpc_port, args.rate, args.grpc_seconds)))
            results["grpcio_client_server_cpu_us_per_check"] = round(
                (cpu_seconds(server) - cpu0)
                / (results["grpcio_client_checks"] + GRPC_WARMUP)
                * 1e6,
                1,
            )
            results.update(asyncio.run(sdk_bench(stack.grpc_port, args.sdk_checks)))
            print(f"grpc: {results}", flush=True)
            # REST checks: the HTTP stack's cost on its own (auth, routing, a no-I/O check).
            cpu0 = cpu_seconds(server)
            rest = uvloop.run(rest_check_clients(stack.api_port, api_key, 32, args.rest_seconds))
            results["rest_check_per_s"] = round(len(rest) / args.rest_seconds, 1)
            results["rest_check_p99_ms"] = round(pct(rest, 0.99), 2)
            results["rest_check_server_cpu_us"] = round(
                (cpu_seconds(server) - cpu0) / len(rest) * 1e6, 1
            )
            results.update(
                consume_bench(
                    stack.api_port,
                    api_key,
                    args.clients,
                    args.consume_seconds,
                    args.overdraft_wallet,
                    args.consume_rate,
                    lambda: cpu_seconds(server, children=True),
                )
            )
        finally:
            stack.stop()
    results["loadavg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
