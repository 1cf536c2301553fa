"""Benchmark: concurrent clients consuming credits from ONE wallet, in-process.

Each client is a thread calling ``Ledger.consume`` (unique idempotency keys) until the wallet
refuses with InsufficientCredits. The wallet holds exactly ``--consumptions`` x ``--amount``
credits spread over several grants, so a correct ledger grants exactly that many consumptions
and refuses the rest: ``overdraft`` = consumed - granted must be 0 (and ``check_invariants``
must pass). Prints figures; the last line is one JSON object.

    .venv/bin/python bench/ledger_consume.py                     # SQLite (WAL) in a temp dir
    .venv/bin/python bench/ledger_consume.py --backend postgres  # a throwaway local PostgreSQL
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
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcement.ledger import InsufficientCredits, Ledger

ENV, CUSTOMER, CURRENCY = "bench", "customer-1", "credits"


def run(url: str, clients: int, consumptions: int, amount: Decimal, grants: int) -> dict:
    batches: list[int] = []
    ledger = Ledger.from_url(url, on_batch=batches.append)
    ledger.create_schema()
    t0 = datetime.now(UTC)
    per_grant, rest = divmod(consumptions, grants)
    for i in range(grants):
        units = per_grant + (1 if i < rest else 0)
        ledger.grant(
            ENV,
            id=f"grant-{i}",
            customer_id=CUSTOMER,
            currency_id=CURRENCY,
            amount=amount * units,
            priority=i % 3,
            grant_type="PROMOTIONAL" if i % 2 else "PAID",
            created_at=t0,
        )
    granted = ledger.balance(ENV, CUSTOMER, CURRENCY).available
    latencies: list[list[float]] = [[] for _ in range(clients)]
    refused = [0] * clients
    start = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        mine = latencies[n]
        seq = 0
        start.wait()
        while True:
            seq += 1
            began = time.perf_counter()
            try:
                ledger.consume(ENV, CUSTOMER, CURRENCY, amount, f"c{n}-{seq}")
            except InsufficientCredits:
                refused[n] += 1
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
    all_latencies = sorted(x for mine in latencies for x in mine)
    done = len(all_latencies)
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
        "consumptions": done,
        "refused": sum(refused),
        "granted": float(granted),
        "consumed": float(consumed),
        "overdraft": float(consumed - granted) if consumed > granted else 0.0,
        "exact": consumed == granted and balance.available == 0,
        "invariants": invariants,
        "elapsed_s": round(elapsed, 3),
        "consume_per_s": round(done / elapsed, 1),
        "consume_p50_ms": round(statistics.median(all_latencies) * 1e3, 3),
        "consume_p99_ms": round(all_latencies[int(0.99 * (done - 1))] * 1e3, 3),
        "consume_max_ms": round(all_latencies[-1] * 1e3, 3),
        "mean_batch": round(statistics.mean(batches), 1) if batches else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--consumptions", type=int, default=50_000)
    parser.add_argument("--amount", type=Decimal, default=Decimal("0.5"))
    parser.add_argument("--grants", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        if args.backend == "sqlite":
            url = f"sqlite:///{tmp}/ledger.db"
            result = run(url, args.clients, args.consumptions, args.amount, args.grants)
        else:
            from tests.fixtures_postgres import postgres_server

            with postgres_server() as url:
                result = run(url, args.clients, args.consumptions, args.amount, args.grants)
    result["backend"] = args.backend
    result["cpus"] = os.cpu_count()
    for key, value in result.items():
        print(f"{key:>16}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
