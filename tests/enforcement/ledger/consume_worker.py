"""A separate process that consumes from one wallet until refused (for concurrency tests).

    python -m tests.enforcement.ledger.consume_worker URL PREFIX THREADS AMOUNT

Prints ``ready`` once connected, waits for a line on stdin (the start signal), runs THREADS
threads calling ``consume`` with keys PREFIX-<thread>-<n> until each is refused, then prints one
JSON line: {"successes": n, "refusals": n, "errors": [...]}.
"""

from __future__ import annotations

import json
import sys
import threading
from decimal import Decimal

from enforcement.ledger import InsufficientCredits, Ledger

ENV, CUSTOMER, CURRENCY = "production", "customer-1", "credits"


def consume_until_refused(
    ledger: Ledger, prefix: str, threads: int, amount: Decimal, start: threading.Barrier | None
) -> dict[str, object]:
    successes = [0] * threads
    refusals = [0] * threads
    errors: list[str] = []

    def run(n: int) -> None:
        if start is not None:
            start.wait()
        seq = 0
        while True:
            seq += 1
            try:
                ledger.consume(ENV, CUSTOMER, CURRENCY, amount, f"{prefix}-{n}-{seq}")
            except InsufficientCredits:
                refusals[n] += 1
                return
            except Exception as error:  # reported to the test, which fails on any
                errors.append(repr(error))
                return
            successes[n] += 1

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"successes": sum(successes), "refusals": sum(refusals), "errors": errors}


def main() -> None:
    url, prefix, threads, amount = sys.argv[1], sys.argv[2], int(sys.argv[3]), Decimal(sys.argv[4])
    ledger = Ledger.from_url(url)
    ledger.balance(ENV, CUSTOMER, CURRENCY)  # connected
    print("ready", flush=True)
    sys.stdin.readline()
    result = consume_until_refused(ledger, prefix, threads, amount, None)
    ledger.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
