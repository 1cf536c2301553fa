"""Zero overdraft under concurrency: many threads and several processes hammer ONE wallet until
it refuses; exactly the granted credits are consumed, never more, and the books balance.

SQLite: one process's threads share group-committed transactions; other processes serialise
on BEGIN IMMEDIATE. PostgreSQL: every instance locks the wallet row (SELECT ... FOR UPDATE).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from enforcement.ledger import IdempotencyConflict, InsufficientCredits, Ledger
from tests.enforcement.ledger.conftest import T0, postgres_ledger, sqlite_ledger
from tests.enforcement.ledger.consume_worker import (
    CURRENCY,
    CUSTOMER,
    ENV,
    consume_until_refused,
)

REPO = Path(__file__).resolve().parents[3]
AMOUNT = Decimal("0.5")


def fund(ledger: Ledger, consumptions: int) -> Decimal:
    """Spread exactly ``consumptions`` x AMOUNT over grants of mixed priority, type, expiry."""
    total = AMOUNT * consumptions
    shares = [Decimal("0.4"), Decimal("0.3"), Decimal("0.2"), Decimal("0.1")]
    given = Decimal(0)
    for n, share in enumerate(shares):
        amount = total - given if n == len(shares) - 1 else (total * share).quantize(AMOUNT)
        given += amount
        ledger.grant(
            ENV,
            id=f"grant-{n}",
            customer_id=CUSTOMER,
            currency_id=CURRENCY,
            amount=amount,
            priority=[50, 10, 50, 90][n],
            grant_type=["PAID", "PROMOTIONAL", "PROMOTIONAL", "PAID"][n],
            expire_at=None if n % 2 else "2099-01-01T00:00:00Z",
            created_at=T0,
            effective_at=T0,
        )
    assert given == total
    return total


def start_workers(url: str, count: int, threads: int) -> list[subprocess.Popen[str]]:
    procs = []
    for n in range(count):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.enforcement.ledger.consume_worker",
                url,
                f"proc{n}",
                str(threads),
                str(AMOUNT),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    return procs


def run_everywhere(
    ledger: Ledger, url: str, threads: int, processes: int, proc_threads: int
) -> int:
    """Start the processes and the local threads together; return the successes of all."""
    procs = start_workers(url, processes, proc_threads) if processes else []
    start = threading.Barrier(threads + 1)
    local: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: local.update(consume_until_refused(ledger, "local", threads, AMOUNT, start))
    )
    runner.start()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    start.wait()
    runner.join()
    results = [local]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert result["errors"] == []
        assert result["refusals"] > 0  # every client ran until the wallet said no
    return sum(int(r["successes"]) for r in results)  # type: ignore[call-overload]


def assert_exactly_spent(ledger: Ledger, total: Decimal, successes: int) -> None:
    assert successes * AMOUNT == total  # never more than granted, and nothing left unsold
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY)
    assert (balance.consumed, balance.available, balance.granted) == (total, 0, total)
    with pytest.raises(InsufficientCredits):
        ledger.consume(ENV, CUSTOMER, CURRENCY, Decimal("0.00001"), "after-the-storm")
    ledger.check_invariants()


def test_64_threads_spend_exactly_the_balance_sqlite(tmp_path: Path) -> None:
    batches: list[int] = []
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}", on_batch=batches.append)
    ledger.create_schema()
    total = fund(ledger, 3000)
    successes = run_everywhere(ledger, "", 64, 0, 0)
    assert_exactly_spent(ledger, total, successes)
    assert max(batches) > 1  # concurrent callers did share transactions (group commit)
    ledger.close()


def test_threads_and_two_processes_spend_exactly_the_balance_sqlite(tmp_path: Path) -> None:
    ledger = sqlite_ledger(tmp_path / "ledger.db")
    total = fund(ledger, 3000)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    successes = run_everywhere(ledger, url, 32, 2, 16)
    assert_exactly_spent(ledger, total, successes)
    ledger.close()


def test_64_threads_and_two_processes_spend_exactly_the_balance_postgres(
    pg_template: tuple[str, str],
) -> None:
    ledger = postgres_ledger(pg_template)
    total = fund(ledger, 3000)
    url = ledger.engine.url.render_as_string(hide_password=False)
    successes = run_everywhere(ledger, url, 64, 2, 16)
    assert_exactly_spent(ledger, total, successes)
    ledger.close()


def test_one_key_from_many_threads_consumes_once(ledger: Ledger) -> None:
    fund(ledger, 100)
    outcomes: list[bool] = []
    start = threading.Barrier(32)

    def run() -> None:
        start.wait()
        outcomes.append(ledger.consume(ENV, CUSTOMER, CURRENCY, 7, "the-same-key").duplicate)

    threads = [threading.Thread(target=run) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False] + [True] * 31
    assert ledger.balance(ENV, CUSTOMER, CURRENCY).consumed == 7


def test_reservations_and_consumption_mixed_never_overdraw(ledger: Ledger) -> None:
    total = fund(ledger, 400)  # 200 credits
    spent: list[Decimal] = []
    start = threading.Barrier(24)

    def run(n: int) -> None:
        start.wait()
        for i in range(40):
            try:
                if n % 3 == 0:
                    ledger.consume(ENV, CUSTOMER, CURRENCY, 1, f"c-{n}-{i}")
                    spent.append(Decimal(1))
                else:
                    rid = f"r-{n}-{i}"
                    ledger.reserve(ENV, CUSTOMER, CURRENCY, 2, rid, ttl_s=600)
                    used = Decimal(i % 3)  # 0, 1 or 2 of the 2 held
                    ledger.release(ENV, rid, used)
                    spent.append(used)
            except InsufficientCredits:
                pass

    threads = [threading.Thread(target=run, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    balance = ledger.balance(ENV, CUSTOMER, CURRENCY)
    assert balance.consumed == sum(spent) <= total
    assert balance.available == total - balance.consumed and balance.reserved == 0


def race(calls: tuple[Callable[[int], Any], ...], i: int) -> list[str]:
    """Start the calls at the same moment; their outcomes, sorted."""
    outcomes: list[str] = []
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[int], Any]) -> None:
        barrier.wait()
        try:
            call(i)
            outcomes.append("ok")
        except IdempotencyConflict:
            outcomes.append("409")
        except Exception as error:
            outcomes.append(type(error).__name__)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return sorted(outcomes)


def test_two_instances_racing_one_key_on_two_wallets_answer_409_not_an_error(
    pg_template: tuple[str, str],
) -> None:
    """Two instances on one PostgreSQL take the same idempotency key (or reservation id) for
    different wallets at the same moment: their wallet locks do not meet, so both insert the
    key's rows. One must win and the other get IdempotencyConflict (409), as on SQLite, not
    a raw unique violation (which REST answered 503 "retry" or 500)."""
    first = postgres_ledger(pg_template)
    second = Ledger.from_url(first.engine.url.render_as_string(hide_password=False))
    try:
        for currency in ("USD", "EUR"):
            first.grant(ENV, id=f"g-{currency}", customer_id="c", currency_id=currency, amount=100)
        first.grant(ENV, id="g-d", customer_id="d", currency_id="USD", amount=100)
        races = {
            "consume": (
                lambda i: first.consume(ENV, "c", "USD", 1, f"k{i}"),
                lambda i: second.consume(ENV, "c", "EUR", 1, f"k{i}"),
            ),
            "reserve": (
                lambda i: first.reserve(ENV, "c", "USD", 1, f"r{i}"),
                lambda i: second.reserve(ENV, "d", "USD", 1, f"r{i}"),
            ),
        }
        for name, calls in races.items():
            for i in range(12):
                assert race(calls, i) == ["409", "ok"], (name, i)
        first.check_invariants()
    finally:
        first.close()
        second.close()
