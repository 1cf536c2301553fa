"""Group commit: the threads of one process take turns leading a write transaction that
applies every operation queued so far, so concurrent callers share one BEGIN/COMMIT (and one
fsync) instead of queueing for the database's write lock one by one.

Leader/follower for blocking callers: a caller enqueues its operation; if nobody leads, it
leads: it takes the queue, runs the batch in one transaction, wakes the callers whose
operations it ran, and hands leadership to the oldest caller still waiting (or steps down).
A caller's result is only returned after the transaction holding it committed.

Callers that must not block (an event loop) ``submit`` an operation with a callback instead.
Such operations are led by one driver thread, started on first use: when leadership would pass
to a submitted operation (nobody waits on it), the driver takes it and drains the queue,
blocking callers' operations included, then steps down. Callbacks run on the committing
thread once the transaction holding the operation committed (or failed): they must be quick.
Measured under 64 concurrent REST consumptions, this replaces a thread hand-off, a lock
ping-pong and a loop wake-up per operation by one hand-off per batch.

Failure handling: a refusal (LedgerError) is an outcome of its operation and does not disturb
the others. A database error aborts the whole transaction; transient ones (lock timeouts,
serialization failures, deadlocks) are retried, and if a batch of several still fails, each of
its operations is retried alone, so one bad operation cannot sink the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from enforcement.ledger.driver import execute, sqlite_driver
from enforcement.ledger.errors import LedgerError, LedgerUnavailable
from enforcement.ledger.state import WalletState
from enforcement.ledger.unit import Unit

log = logging.getLogger(__name__)

# SQLSTATEs worth retrying: serialization_failure, deadlock_detected, lock_not_available,
# and unique_violation: two instances racing the same idempotency key or reservation id on
# different wallets (whose locks do not meet) both insert its rows; the re-run sees the
# committed one and answers duplicate or 409, as SQLite's single writer does at once.
# Also the server going away or not yet accepting connections (admin/crash shutdown, cannot
# connect now, connection exceptions): a restart or fail-over of PostgreSQL.
_RETRY_SQLSTATES = {"40001", "40P01", "55P03", "23505", "57P01", "57P02", "57P03"}
_RETRY_SQLSTATE_CLASSES = ("08",)


class Op(Protocol):
    exclusive: bool

    @property
    def wallet_ids(self) -> tuple[str, ...]: ...

    def prefetch_key(self) -> tuple[str, ...] | None: ...

    def apply(self, unit: Unit) -> Any: ...


def is_transient(error: BaseException) -> bool:
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in _RETRY_SQLSTATES or str(sqlstate).startswith(_RETRY_SQLSTATE_CLASSES):
        return True
    message = str(error.orig).lower()
    return "database is locked" in message or "database is busy" in message


def unavailable(error: Exception) -> Exception:
    """A database failure as the callers' retryable 503; refusals and bugs stay as they are."""
    if isinstance(error, DBAPIError):
        return LedgerUnavailable(f"the ledger's database failed: {type(error.orig).__name__}")
    return error


Callback = Callable[[Any, BaseException | None], None]


class _Pending:
    """One queued operation. A blocking caller's ``wake`` is a plain lock created held: the
    caller blocks on acquiring it and the leader releases it once (cheaper than an Event's
    condition). A submitted operation has a ``callback`` instead (and no lock)."""

    __slots__ = ("callback", "done", "error", "op", "result", "wake")

    def __init__(self, op: Op, callback: Callback | None = None) -> None:
        self.op = op
        self.callback = callback
        self.wake: threading.Lock | None = None
        if callback is None:
            self.wake = threading.Lock()
            self.wake.acquire()
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any, error: BaseException | None) -> None:
        if self.done:
            return
        self.result, self.error, self.done = result, error, True
        if self.callback is not None:
            try:
                self.callback(result, error)
            except Exception:  # the committer must go on whatever a callback does
                log.exception("ledger operation callback failed")
        else:
            assert self.wake is not None
            self.wake.release()


class WalletCarry:
    """Wallet states carried from one write transaction to the next on one SQLite connection,
    so a stream of consumptions on a wallet does not read its accounts and grants again in
    every batch (two of the four reads of a consumption batch; measured in
    docs/benchmarks-enforcement.md).

    Exact, not a guess: the carried states are the ones this connection committed, and they
    are used only when ``PRAGMA data_version`` (which changes when any *other* connection
    commits) shows that nothing else wrote the database since. Only batches made entirely of
    operations that declare ``carries_wallets`` (consumptions: they change a wallet only
    through its loaded state) keep them; any other batch, a rollback, a new connection or
    PostgreSQL (other hosts write without a trace here) starts from the database again.
    """

    MAX_WALLETS = 1024

    def __init__(self) -> None:
        self._wallets: dict[str, WalletState] = {}
        self._version: int | None = None

    def take(self, conn: Connection, ops: list[Op]) -> dict[str, WalletState] | None:
        """Inside the transaction (write lock held): the carried wallets, or None if this
        batch must not carry any."""
        raw = sqlite_driver(conn)
        if raw is None or not all(getattr(op, "carries_wallets", False) for op in ops):
            self.drop()
            return None
        version = execute(raw, "PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._wallets = {}
            self._version = version
        return self._wallets

    def keep(self, wallets: dict[str, WalletState]) -> None:
        """After the commit: the wallets of the transaction, most recent last."""
        for wallet_id, wallet in wallets.items():
            self._wallets.pop(wallet_id, None)
            self._wallets[wallet_id] = wallet
        while len(self._wallets) > self.MAX_WALLETS:
            del self._wallets[next(iter(self._wallets))]

    def drop(self) -> None:
        self._wallets = {}
        self._version = None


class Committer:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 256,
        retries: int = 8,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._retries = retries
        self._on_batch = on_batch
        self._mu = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self._conn: Connection | None = None
        self._carry = WalletCarry()
        # The driver thread of submitted operations (see the module docstring).
        self._driver_turn = threading.Condition(self._mu)
        self._driver_leads = False
        self._driver: threading.Thread | None = None
        self._closed = False

    def run(self, op: Op) -> Any:
        pending = _Pending(op)
        assert pending.wake is not None
        with self._mu:
            self._queue.append(pending)
            lead = not self._leading
            self._leading = True
        if not lead:
            pending.wake.acquire()
            if pending.done:
                return self._outcome(pending)
            # Woken without a result: leadership was handed to us.
        try:
            with self._mu:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            self._execute(batch)
        finally:
            with self._mu:
                self._hand_over()
        return self._outcome(pending)

    def submit(self, op: Op, callback: Callback) -> None:
        """Queue ``op`` without blocking; ``callback(result, error)`` is called on the
        committing thread after its transaction committed (``error``: its refusal or the
        failure)."""
        pending = _Pending(op, callback)
        with self._mu:
            if self._closed:
                raise RuntimeError("the ledger is closed")
            self._queue.append(pending)
            if not self._leading:
                self._leading = True
                self._wake_driver()

    def _hand_over(self) -> None:
        """After a batch (``_mu`` held): the oldest waiter leads next, the driver if nobody
        waits on it, or nobody."""
        if not self._queue:
            self._leading = False
        elif self._queue[0].wake is not None:
            self._queue[0].wake.release()
        else:
            self._wake_driver()

    def _wake_driver(self) -> None:
        if self._driver is None:
            self._driver = threading.Thread(
                target=self._drive, name="ledger-committer", daemon=True
            )
            self._driver.start()
        self._driver_leads = True
        self._driver_turn.notify()

    def _drive(self) -> None:
        while True:
            with self._mu:
                while not self._driver_leads:
                    if self._closed:
                        return
                    self._driver_turn.wait()
                self._driver_leads = False
            # Leading: drain the queue (blocking callers' operations too), then step down.
            while True:
                with self._mu:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    if not batch:
                        self._leading = False
                        break
                try:
                    self._execute(batch)
                except BaseException:  # every pending of the batch got the error already
                    log.exception("ledger batch failed")

    @staticmethod
    def _outcome(pending: _Pending) -> Any:
        if pending.error is not None:
            raise pending.error
        return pending.result

    def close(self) -> None:
        with self._mu:
            self._closed = True
            self._driver_turn.notify()
            driver = self._driver
        if driver is not None and driver is not threading.current_thread():
            driver.join(10)  # it finishes the operations already submitted
        with self._mu:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- leader side -----------------------------------------------------------------------

    def _execute(self, batch: list[_Pending]) -> None:
        try:
            group: list[_Pending] = []
            for pending in batch:
                if pending.op.exclusive:
                    if group:
                        self._run_group(group)
                        group = []
                    self._run_group([pending])
                else:
                    group.append(pending)
            if group:
                self._run_group(group)
        except BaseException as error:  # never leave a caller waiting forever
            for pending in batch:
                if not pending.done:
                    pending.finish(None, error)
            raise

    def _run_group(self, group: list[_Pending]) -> None:
        delay = 0.001
        for attempt in range(self._retries + 1):
            try:
                outcomes = self._transact([p.op for p in group])
            except Exception as error:
                self._drop_connection()
                if is_transient(error) and attempt < self._retries:
                    log.info("ledger transaction retry %d after %s", attempt + 1, error)
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 0.1)
                    continue
                if len(group) > 1:
                    log.warning(
                        "ledger batch of %d failed (%s); retrying its operations one by one",
                        len(group),
                        error,
                    )
                    for pending in group:
                        self._run_group([pending])
                    return
                log.error("ledger operation %r failed: %s", group[0].op, error)
                group[0].finish(None, unavailable(error))
                return
            for pending, (result, error) in zip(group, outcomes, strict=True):
                pending.finish(result, error)
            if self._on_batch is not None:
                self._on_batch(len(group))
            return

    def _writer(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(ledger_begin="IMMEDIATE")
        return self._conn

    def _drop_connection(self) -> None:
        self._carry.drop()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is discarded anyway
                log.debug("closing a failed ledger connection", exc_info=True)
            self._conn = None

    def _transact(self, ops: list[Op]) -> list[tuple[Any, LedgerError | None]]:
        conn = self._writer()
        outcomes: list[tuple[Any, LedgerError | None]] = []
        try:
            with conn.begin():
                carried = self._carry.take(conn, ops)
                unit = Unit(conn, carried)
                unit.lock(w for op in ops for w in op.wallet_ids)
                _prefetch(unit, ops)
                for op in ops:
                    try:
                        outcomes.append((op.apply(unit), None))
                    except LedgerError as refusal:
                        outcomes.append((None, refusal))
                unit.flush()
        except BaseException:
            self._carry.drop()  # the states may hold what was rolled back
            raise
        if carried is not None:
            self._carry.keep(unit.wallets)
        return outcomes


def _prefetch(unit: Unit, ops: list[Op]) -> None:
    """One query per (environment, customer) for idempotency keys, instead of one per op."""
    keys: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for op in ops:
        key = op.prefetch_key()
        if key is not None:
            keys[key[:-1]].append(key[-1])
    for scope, names in keys.items():
        if len(names) < 2:
            continue  # a single lookup happens lazily anyway
        if scope[0] == "consumption":
            unit.prefetch_consumptions(scope[1], scope[2], names)
        else:
            unit.prefetch_reservations(scope[1], names)
