"""Benchmark: concurrent clients consuming credits from ONE wallet, in-process.

Each client is a thread calling ``Ledger.consume`` (unique idempotency keys) until the wallet
refuses with InsufficientCredits. The wallet holds exactly ``--consumptions`` x ``--amount``
credits spread over several grants, so a correct ledger grants exactly that many consumptions
and refuses the rest: ``overdraft`` = consumed - granted must be 0 (and ``check_invariants``
must pass).

Closed loop (default): a client sends its next request when the last is answered, so with N
clients the mean latency is N / throughput (Little's law). ``--rate R``: the clients together
offer R requests/s and latency is measured from each request's scheduled time.

``harness_p99_ms`` is the same client harness (same threads, same pacing) around a no-op: the
latency floor of Python threads on this host at that moment, to read the ledger's p99 against.

    .venv/bin/python bench/ledger_consume.py                     # SQLite (WAL, synchronous=FULL)
    .venv/bin/python bench/ledger_consume.py --rate 4000         # paced
    .venv/bin/python bench/ledger_consume.py --sqlite-synchronous NORMAL
    .venv/bin/python bench/ledger_consume.py --backend postgres  # a throwaway local PostgreSQL

Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcement.ledger import InsufficientCredits, Ledger

ENV, CUSTOMER, CURRENCY = "bench", "customer-1", "credits"


def drive(
    clients: int, rate: float | None, call: Callable[[int, int], bool]
) -> tuple[list[float], float]:
    """Run ``clients`` threads calling ``call(client, seq)`` until it returns False.
    Returns (sorted latencies in seconds, elapsed seconds)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    interval = None if rate is None else clients / rate
    start = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        mine = latencies[n]
        seq = 0
        start.wait()
        due = time.perf_counter() + (0 if interval is None else interval * n / clients)
        while True:
            seq += 1
            if interval is not None:
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                began = due
                due += interval
            else:
                began = time.perf_counter()
            if not call(n, seq):
                return
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return sorted(x for mine in latencies for x in mine), elapsed


def p99(latencies: list[float]) -> float:
    return round(latencies[int(0.99 * (len(latencies) - 1))] * 1e3, 3)


def harness_floor(clients: int, rate: float | None, calls: int) -> float:
    """p99 of the harness around a no-op that still crosses a lock, like the ledger call."""
    lock = threading.Lock()
    per_client = max(1, calls // clients)

    def noop(_n: int, seq: int) -> bool:
        with lock:
            pass
        return seq <= per_client

    latencies, _ = drive(clients, rate, noop)
    return p99(latencies)


def run(
    url: str,
    clients: int,
    consumptions: int,
    amount: Decimal,
    grants: int,
    synchronous: str,
    rate: float | None,
) -> dict[str, object]:
    batches: list[int] = []
    ledger = Ledger.from_url(url, on_batch=batches.append, sqlite_synchronous=synchronous)
    ledger.create_schema()
    t0 = datetime.now(UTC)
    per_grant, rest = divmod(consumptions, grants)
    for i in range(grants):
        ledger.grant(
            ENV,
            id=f"grant-{i}",
            customer_id=CUSTOMER,
            currency_id=CURRENCY,
            amount=amount * (per_grant + (1 if i < rest else 0)),
            priority=i % 3,
            grant_type="PROMOTIONAL" if i % 2 else "PAID",
            created_at=t0,
        )
    granted = ledger.balance(ENV, CUSTOMER, CURRENCY).available
    refused = [0] * clients

    def consume(n: int, seq: int) -> bool:
        try:
            ledger.consume(ENV, CUSTOMER, CURRENCY, amount, f"c{n}-{seq}")
        except InsufficientCredits:
            refused[n] += 1
            return False
        return True

    cpu0 = time.process_time()
    latencies, elapsed = drive(clients, rate, consume)
    cpu = time.process_time() - cpu0
    done = len(latencies)
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY)
    invariants = "ok"
    try:
        ledger.check_invariants()
    except Exception as error:  # report, do not hide
        invariants = f"FAILED: {error}"
    ledger.close()
    consumed = balance.consumed
    return {
        "clients": clients,
        "offered_rate": rate,
        "consumptions": done,
        "refused": sum(refused),
        "granted": float(granted),
        "consumed": float(consumed),
        "overdraft": float(consumed - granted) if consumed > granted else 0.0,
        "exact": consumed == granted and balance.available == 0,
        "invariants": invariants,
        "elapsed_s": round(elapsed, 3),
        "consume_per_s": round(done / elapsed, 1),
        "consume_p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "consume_p99_ms": p99(latencies),
        "consume_max_ms": round(latencies[-1] * 1e3, 3),
        "cpu_us_per_consume": round(cpu / done * 1e6, 1),
        "mean_batch": round(statistics.mean(batches), 1) if batches else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--consumptions", type=int, default=50_000)
    parser.add_argument("--amount", type=Decimal, default=Decimal("0.5"))
    parser.add_argument("--grants", type=int, default=8)
    parser.add_argument(
        "--rate", type=float, default=None, help="paced: total requests/s (default: closed loop)"
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="FULL (default): every commit survives power loss; NORMAL: process crashes only",
    )
    args = parser.parse_args()
    floor = harness_floor(args.clients, args.rate, min(args.consumptions, 20_000))
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        params = (args.clients, args.consumptions, args.amount, args.grants)
        if args.backend == "sqlite":
            result = run(f"sqlite:///{tmp}/ledger.db", *params, args.sqlite_synchronous, args.rate)
            result["sqlite_synchronous"] = args.sqlite_synchronous
        else:
            from tests.fixtures_postgres import postgres_server

            with postgres_server() as url:
                result = run(url, *params, "FULL", args.rate)
    result["harness_p99_ms"] = floor
    result["backend"] = args.backend
    result["cpus"] = os.cpu_count()
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
