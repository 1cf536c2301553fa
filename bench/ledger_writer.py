"""Benchmark: the ledger's writer alone, without HTTP (SQLite, synchronous=FULL).

1. In process: consumption batches of each ``--sizes`` run by the ledger's group committer
   (``Committer._execute``, as the writer child runs them, WAL checkpoints off the commit):
   CPU and wall time per batch and per consumption. This is the writer's own cost, without
   pipes; the commit's sync is in the wall time.
2. The writer child (``LedgerWriter``, as the runtime uses it): an event loop submits
   consumptions of one wallet at ``--rate`` per second (in ticks of 0.5 ms) for ``--seconds``;
   latency from each consumption's scheduled time to its answer (committed and synced), and
   the child's CPU per consumption.

    .venv/bin/python bench/ledger_writer.py [--sizes 1 8 32] [--rate 5000] [--seconds 8]

Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proc_cpu import cpu_seconds

from enforcement.ledger.checkpoints import WalCheckpoints
from enforcement.ledger.commit import _Pending
from enforcement.ledger.ledger import Ledger
from enforcement.ledger.writer import LedgerWriter

ENV, CUSTOMER, CURRENCY = "bench", "customer-1", "credits"


def _ledger(base: Path) -> tuple[str, Ledger]:
    url = f"sqlite:///{base / 'ledger.db'}"
    ledger = Ledger.from_url(url, sqlite_autocheckpoint=False)
    ledger.create_schema()
    ledger.grant(ENV, id="g1", customer_id=CUSTOMER, currency_id=CURRENCY, amount=10**9)
    return url, ledger


def _raise(_result: Any, error: BaseException | None) -> None:
    if error is not None:
        raise error


def batches(base: Path, sizes: list[int], per_size: int) -> dict[str, float]:
    _url, ledger = _ledger(base)
    committer = ledger._committer
    committer._writer()
    checkpoints = WalCheckpoints(str(base / "ledger.db"))
    checkpoints.start()
    out: dict[str, float] = {}
    seq = 0
    try:
        for size in sizes:
            count = max(200, per_size // size)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(count):
                ops = []
                for _ in range(size):
                    seq += 1
                    key = f"k-{seq}"
                    ops.append(_Pending(ledger.consume_op(ENV, CUSTOMER, CURRENCY, 1, key), _raise))
                committer._execute(ops)
                checkpoints.after_batch()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            out[f"batch{size}_cpu_us_per_batch"] = round(cpu / count * 1e6, 1)
            out[f"batch{size}_wall_us_per_batch"] = round(wall / count * 1e6, 1)
            out[f"batch{size}_cpu_us_per_op"] = round(cpu / count / size * 1e6, 1)
            print(
                f"batch of {size:3d}: {cpu / count * 1e6:7.0f} us CPU, {wall / count * 1e6:7.0f} us"
                f" wall per batch; {cpu / count / size * 1e6:6.1f} us CPU per consumption"
            )
    finally:
        checkpoints.stop()
        ledger.close()
    return out


async def paced(base: Path, rate: float, seconds: float) -> dict[str, float]:
    url, ledger = _ledger(base)
    loop = asyncio.get_running_loop()
    writer = LedgerWriter(url, loop=loop)
    writer.start()
    latencies: list[float] = []
    seq = 0

    def submit(scheduled: float) -> None:
        nonlocal seq
        seq += 1
        op = ledger.consume_op(ENV, CUSTOMER, CURRENCY, 1, f"p-{seq}")

        def done(_result: Any, error: BaseException | None) -> None:
            _raise(None, error)
            latencies.append(time.perf_counter() - scheduled)

        writer.submit(op, done)

    try:
        for _ in range(200):  # warm: the child is up and has its wallet
            submit(time.perf_counter())
        while len(latencies) < 200:
            await asyncio.sleep(0.01)
        latencies.clear()
        assert writer._proc is not None
        child = writer._proc.pid
        cpu0 = cpu_seconds(child)
        total, sent, start = int(rate * seconds), 0, time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                submit(start + sent / rate)
                sent += 1
            await asyncio.sleep(0.0005)
        while len(latencies) < total:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(child) - cpu0
    finally:
        await loop.run_in_executor(None, writer.close)
        ledger.close()
    latencies.sort()
    n = len(latencies)
    out = {
        "paced_target_per_s": rate,
        "paced_per_s": round(n / elapsed, 1),
        "paced_p50_ms": round(latencies[n // 2] * 1e3, 2),
        "paced_p90_ms": round(latencies[int(n * 0.9)] * 1e3, 2),
        "paced_p99_ms": round(latencies[int(n * 0.99)] * 1e3, 2),
        "paced_max_ms": round(latencies[-1] * 1e3, 2),
        "paced_writer_cpu_us_per_op": round(cpu / n * 1e6, 1),
    }
    print(
        f"writer child at {rate:.0f}/s: {out['paced_per_s']}/s, p50 {out['paced_p50_ms']} ms,"
        f" p90 {out['paced_p90_ms']} ms, p99 {out['paced_p99_ms']} ms,"
        f" {out['paced_writer_cpu_us_per_op']} us CPU per consumption"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--per-size", type=int, default=6000, help="consumptions per batch size")
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"loadavg_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        results.update(batches(Path(tmp) / "a", args.sizes, args.per_size))
        results.update(asyncio.run(paced(Path(tmp) / "b", args.rate, args.seconds)))
    results["loadavg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
