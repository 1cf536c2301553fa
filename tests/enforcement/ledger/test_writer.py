"""The ledger's writer process (enforcement/ledger/writer.py): the same results as the ledger
in-process, zero overdraft with the in-process committer writing the same wallet at the same
time, refusals that keep their details across the pipe, and a child that dies: its unanswered
operations fail as retryable, the next submission starts a new child, nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from enforcement.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    Ledger,
    LedgerUnavailable,
    ReservationAlreadyResolved,
)
from enforcement.ledger.writer import LedgerWriter
from tests.enforcement.ledger.conftest import T0
from tests.enforcement.ledger.helpers import CURRENCY, CUSTOMER, ENV, available, consume, grant


class Results:
    """Callbacks of submitted operations, awaited from the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.items: dict[str, tuple[Any, BaseException | None]] = {}
        self.threads: set[int] = set()  # where the callbacks ran

    def callback(self, name: str):  # type: ignore[no-untyped-def]
        def deliver(result: Any, error: BaseException | None) -> None:
            with self.lock:
                self.items[name] = (result, error)
                self.threads.add(threading.get_ident())
                self.done.notify_all()

        return deliver

    def wait(self, count: int, timeout: float = 60.0) -> dict[str, tuple[Any, Any]]:
        with self.lock:
            assert self.done.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return dict(self.items)


def url_of(ledger: Ledger) -> str:
    return ledger.engine.url.render_as_string(hide_password=False)


@pytest.fixture(params=["reader-thread", "event-loop"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop | None]:
    """Where the writer reads its answers: its own thread, or an event loop (the runtime's
    way) running in a thread of its own."""
    if request.param == "reader-thread":
        yield None
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def loop_thread(loop: asyncio.AbstractEventLoop) -> int:
    return asyncio.run_coroutine_threadsafe(_ident(), loop).result(10)


async def _ident() -> int:
    return threading.get_ident()


@pytest.fixture
def writer(ledger: Ledger, loop: asyncio.AbstractEventLoop | None) -> Any:
    w = LedgerWriter(url_of(ledger), loop=loop)
    w.start()
    yield w
    w.close()


def op(ledger: Ledger, amount: Any, key: str, **kw: Any) -> Any:
    return ledger.consume_op(ENV, CUSTOMER, CURRENCY, amount, key, now=T0, **kw)


def test_writer_results_are_the_ledgers(ledger: Ledger, writer: LedgerWriter) -> None:
    grant(ledger, "g", 10)
    results = Results()
    writer.submit(op(ledger, 3, "a"), results.callback("a"))
    writer.submit(op(ledger, 3, "a"), results.callback("a-again"))
    writer.submit(op(ledger, 4, "a"), results.callback("a-other"))
    writer.submit(op(ledger, 100, "b"), results.callback("b"))
    got = results.wait(4)
    first, error = got["a"]
    assert error is None and first.amount == Decimal(3) and first.duplicate is False
    assert first.available_after == Decimal(7)
    again, error = got["a-again"]
    assert error is None and again.duplicate is True and again.amount == Decimal(3)
    assert isinstance(got["a-other"][1], IdempotencyConflict)
    refused = got["b"][1]
    assert isinstance(refused, InsufficientCredits)
    assert refused.available == Decimal(7) and refused.requested == Decimal(100)
    assert available(ledger) == Decimal(7)
    # The in-process ledger sees the same consumption (same database, same key).
    assert consume(ledger, 3, "a").duplicate is True
    if writer.loop is not None:  # answers are handled on the loop, not on a thread of ours
        assert results.threads == {loop_thread(writer.loop)}
    else:
        assert threading.get_ident() not in results.threads


def test_refusals_keep_their_details_through_pickle() -> None:
    insufficient = InsufficientCredits("no", available=Decimal(1), requested=Decimal(2))
    copy = pickle.loads(pickle.dumps(insufficient))
    assert (str(copy), copy.available, copy.requested) == ("no", Decimal(1), Decimal(2))
    resolved = pickle.loads(pickle.dumps(ReservationAlreadyResolved("r", status="EXPIRED")))
    assert resolved.status == "EXPIRED" and resolved.http_status == 409
    assert LedgerUnavailable("x").http_status == 503


def test_no_overdraft_with_the_writer_and_the_ledger_spending_one_wallet(
    ledger: Ledger, writer: LedgerWriter
) -> None:
    """Two committers (the child and this process) and 200 spenders on a wallet of 150."""
    grant(ledger, "g1", 100)
    grant(ledger, "g2", 50, priority=10)
    results = Results()
    for n in range(100):
        writer.submit(op(ledger, 1, f"w{n}"), results.callback(f"w{n}"))
    inline_ok: list[str] = []

    def spend(n: int) -> None:
        try:
            consume(ledger, 1, f"i{n}")
            inline_ok.append(f"i{n}")
        except InsufficientCredits:
            pass

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = results.wait(100)
    writer_ok = [k for k, (_, e) in got.items() if e is None]
    assert all(isinstance(e, InsufficientCredits) for _, e in got.values() if e is not None)
    assert len(writer_ok) + len(inline_ok) == 150
    assert available(ledger) == 0


def test_a_dead_writer_fails_what_it_had_and_a_new_one_takes_over(
    ledger: Ledger, writer: LedgerWriter
) -> None:
    grant(ledger, "g", 1000)
    results = Results()
    writer.submit(op(ledger, 1, "before"), results.callback("before"))
    results.wait(1)
    child = writer._proc
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)  # it cannot answer what comes now
    try:
        for n in range(5):
            writer.submit(op(ledger, 1, f"lost{n}"), results.callback(f"lost{n}"))
        time.sleep(0.3)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGCONT)
    got = results.wait(6)
    for n in range(5):
        assert isinstance(got[f"lost{n}"][1], LedgerUnavailable)
    # The next submission starts a new child; a retry with the same key is safe.
    for n in range(5):
        writer.submit(op(ledger, 1, f"lost{n}"), results.callback(f"retry{n}"))
    got = results.wait(11)
    assert all(got[f"retry{n}"][1] is None for n in range(5))
    assert writer._proc is not None and writer._proc.pid != child.pid
    assert available(ledger) == Decimal(1000 - 6)  # "before" + five, each once


def test_a_terminal_ctrl_c_does_not_stop_the_writer_mid_batch(
    ledger: Ledger, writer: LedgerWriter
) -> None:
    # Ctrl-C reaches the runtime's whole process group; the runtime stops the writer itself
    # (close), after the answers in flight.
    grant(ledger, "g", 10)
    results = Results()
    writer.submit(op(ledger, 1, "a"), results.callback("a"))
    results.wait(1)
    child = writer._proc
    assert child is not None
    os.kill(child.pid, signal.SIGINT)
    writer.submit(op(ledger, 1, "b"), results.callback("b"))
    assert results.wait(2)["b"][1] is None
    assert writer._proc is child and child.poll() is None
    assert available(ledger) == Decimal(8)


def test_close_finishes_what_was_submitted(
    ledger: Ledger, loop: asyncio.AbstractEventLoop | None
) -> None:
    grant(ledger, "g", 100)
    writer = LedgerWriter(url_of(ledger), loop=loop)
    results = Results()
    for n in range(20):
        writer.submit(op(ledger, 1, f"k{n}"), results.callback(f"k{n}"))
    writer.close()
    got = results.wait(20, timeout=5)
    assert all(error is None for _, error in got.values())
    assert available(ledger) == Decimal(80)
    with pytest.raises(LedgerUnavailable):
        writer.submit(op(ledger, 1, "late"), results.callback("late"))


def test_in_process_submit_shares_batches_with_blocking_callers(ledger: Ledger) -> None:
    """Ledger.submit (no writer process): the committer's driver thread leads submitted
    operations, blocking callers lead their own, leadership passes both ways, and the wallet
    is spent exactly once per key."""
    grant(ledger, "g", 300)
    results = Results()
    blocking_ok: list[str] = []

    def spend(n: int) -> None:
        for i in range(10):
            try:
                consume(ledger, 1, f"t{n}-{i}")
                blocking_ok.append(f"t{n}-{i}")
            except InsufficientCredits:
                return

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for n in range(200):
        ledger.submit(op(ledger, 1, f"s{n}"), results.callback(f"s{n}"))
    for t in threads:
        t.join()
    got = results.wait(200)
    submitted_ok = [k for k, (_, e) in got.items() if e is None]
    assert all(isinstance(e, InsufficientCredits) for _, e in got.values() if e is not None)
    assert len(submitted_ok) + len(blocking_ok) == 300
    assert available(ledger) == 0
    assert len(submitted_ok) >= 100  # the blocking callers try at most 200
    # A duplicate submitted later answers the first consumption.
    again = Results()
    ledger.submit(op(ledger, 1, submitted_ok[0]), again.callback("dup"))
    assert again.wait(1)["dup"][0].duplicate is True


PARENT = """
import sys, time
from enforcement.ledger import Ledger
from enforcement.ledger.writer import LedgerWriter
url = sys.argv[1]
writer = LedgerWriter(url)
writer.start()
print(writer._proc.pid, flush=True)
ledger = Ledger.from_url(url)
for i in range(1_000_000):
    writer.submit(ledger.consume_op("production", "customer-1", "credits", 1, f"p{i}"),
                  lambda r, e: None)
    if i % 200 == 0:
        time.sleep(0.005)
"""


def test_the_writer_exits_when_its_parent_is_killed(sqlite_only: Ledger) -> None:
    """A runtime killed with SIGKILL leaves no writer behind: the child sees its stdin close,
    finishes (or drops) its batch and exits; what it committed stays consistent."""
    import subprocess
    import sys

    grant(sqlite_only, "g", 10**6)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, url_of(sqlite_only)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 20
    while available(sqlite_only) == 10**6:  # it is consuming
        assert time.monotonic() < deadline
        time.sleep(0.05)
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists():
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # exited; waiting for init to reap it
            break
        assert time.monotonic() < deadline, "the writer outlived its parent"
        time.sleep(0.05)
    spent = 10**6 - available(sqlite_only)
    assert spent > 0  # the invariants are checked by the fixture
