"""The REST consumption load of the enforcement benchmarks: keep-alive HTTP/1.1 clients on raw
asyncio streams with pre-encoded requests, closed loop or paced (no coordinated omission), and
the percentile and GC helpers their figures need. Shared by ``bench/enforcement.py`` (the
runtime) and ``bench/consume_shape.py`` (stand-in servers of the same shape)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Iterator
from typing import Any


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection in the load generator while it measures: a gen-2 pass of this
    process (60-100 ms, measured) would show as the server's latency."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def consumption_request(port: int, api_key: str, body: bytes) -> bytes:
    return (
        b"POST /api/v1/credits/consumption HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\nX-API-KEY: {api_key}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def consume_clients(
    port: int,
    api_key: str,
    clients: int,
    seconds: float | None,
    body: dict[str, Any],
    stop_on_refusal: bool,
    rate: float | None = None,
) -> tuple[list[float], dict[int, int]]:
    """Closed loop (each client sends when answered), or with ``rate`` paced: the clients
    together offer ``rate`` requests/s on fixed schedules (client n at offset n/rate), and a
    latency counts from the request's scheduled time, so a late answer delays the next
    request's start and that wait counts too (no coordinated omission)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + (seconds or 3600)
    interval = None if rate is None else clients / rate

    # The body with a unique key, without a json.dumps per request (the load generator
    # shares the server's 2 cores: the less it costs, the less it takes from the server).
    head = json.dumps(body)[:-1] + ', "idempotencyKey": "b-'

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        seq = 0
        due = time.perf_counter() + (0.0 if interval is None else interval * n / clients)
        try:
            while time.monotonic() < deadline:
                seq += 1
                payload = f'{head}{n}-{seq}-{time.time_ns()}"}}'
                if interval is not None:
                    pause = due - time.perf_counter()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    t0 = due
                    due += interval
                else:
                    t0 = time.perf_counter()
                writer.write(consumption_request(port, api_key, payload.encode()))
                status = await read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200 and stop_on_refusal:
                    return
        finally:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies, statuses
