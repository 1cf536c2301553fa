"""Ingestion benchmark: many keep-alive connections POSTing 1000-event batches to a running stack.

Usage (against `byoc up`, which writes <data-dir>/stack.json with the endpoint and API key):

    .venv/bin/python bench/ingest.py --data-dir .byoc --duration 30 --connections 32

The client is cheap on purpose (it shares the machine with the stack): raw asyncio streams on
uvloop, bodies pre-encoded once; per request only a fixed-width request number is patched
into the idempotency keys (one C-level ``bytes.replace``) so every event stays unique.
Only 2xx answers count as acked events. The LAST line printed is one JSON object:
``{"events_per_s", "p50_ms", "p99_ms", "errors", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PLACEHOLDER = b"@@@@@@@@@@"  # replaced by a 10-digit request number


def make_body(batch: int, customers: int, seed: int) -> bytes:
    """A realistic batch: events of ``customers`` customers, a few event kinds, dimensions."""
    rng = random.Random(seed)
    now = time.time()
    kinds = [("api_call", "endpoint"), ("llm_tokens", "model"), ("storage_gb", "bucket")]
    events = []
    for i in range(batch):
        name, label = rng.choice(kinds)
        event: dict[str, Any] = {
            "customerId": f"bench-customer-{rng.randrange(customers):05d}",
            "eventName": name,
            "idempotencyKey": f"{PLACEHOLDER.decode()}-{seed}-{i:04d}",
            "dimensions": {
                label: rng.choice(["a", "b", "c", "d"]),
                "region": rng.choice(["eu-west-1", "us-east-1"]),
                "tokens": rng.randrange(1, 4000),
                "cached": rng.random() < 0.3,
            },
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - rng.random() * 60))
            + f".{rng.randrange(1000):03d}Z",
        }
        if rng.random() < 0.5:
            event["resourceId"] = f"workspace-{rng.randrange(3)}"
        events.append(event)
    return json.dumps({"events": events}, separators=(",", ":")).encode()


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.acked_events = 0
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.error_samples: list[str] = []


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def connection(
    host: str,
    port: int,
    head: bytes,
    bodies: list[bytes],
    events_per_body: int,
    counter: list[int],
    stop_at: float,
    measure_from: float,
    stats: Stats,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            counter[0] += 1
            number = counter[0]
            body = bodies[number % len(bodies)].replace(PLACEHOLDER, b"%010d" % number)
            started = time.perf_counter()
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            try:
                status, answer = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                stats.errors += 1
                stats.statuses["conn"] = stats.statuses.get("conn", 0) + 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            elapsed = time.perf_counter() - started
            if started < measure_from:
                continue  # warm-up
            stats.statuses[str(status)] = stats.statuses.get(str(status), 0) + 1
            if 200 <= status < 300:
                stats.acked_events += events_per_body
                stats.latencies.append(elapsed)
            else:
                stats.errors += 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append(f"{status} {answer[:200]!r}")
    finally:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stack_endpoint(data_dir: Path) -> tuple[str, str]:
    stack = json.loads((data_dir / "stack.json").read_text())
    url = stack["endpoints"]["api"]
    return url, stack["api_key"]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.url and args.api_key:
        url, key = args.url, args.api_key
    else:
        url, key = stack_endpoint(Path(args.data_dir).absolute())
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-KEY: {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    bodies = [make_body(args.batch, args.customers, seed) for seed in range(args.bodies)]
    counter = [0]
    stats = Stats()
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    await asyncio.gather(
        *(
            connection(host, port, head, bodies, args.batch, counter, stop_at, measure_from, stats)
            for _ in range(args.connections)
        )
    )
    elapsed = time.perf_counter() - measure_from
    return {
        "events_per_s": round(stats.acked_events / elapsed),
        "p50_ms": round(percentile(stats.latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(stats.latencies, 0.99) * 1000, 2),
        "errors": stats.errors,
        "acked_events": stats.acked_events,
        "requests_ok": len(stats.latencies),
        "statuses": stats.statuses,
        "error_samples": stats.error_samples,
        "duration_s": round(elapsed, 2),
        "connections": args.connections,
        "batch": args.batch,
        "customers_per_batch": args.customers,
        "body_bytes": len(bodies[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=".byoc", help="stack data dir (stack.json)")
    parser.add_argument("--url", help="runtime API base URL (instead of stack.json)")
    parser.add_argument("--api-key", help="API key (instead of stack.json)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1000, help="events per request")
    parser.add_argument(
        "--customers",
        type=int,
        default=100,
        help="distinct customers in the pool each batch draws from",
    )
    parser.add_argument("--bodies", type=int, default=8, help="distinct pre-encoded bodies")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    print(json.dumps(result), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
