"""The ledger's hot writes (consumptions) in a process of their own.

Why: one Python process runs one thread of Python at a time (the GIL). Under 64 concurrent
REST consumptions the runtime's event loop (HTTP, routing, validation: ~160 us per request)
and the ledger's committer thread (~60 us per operation alone) took turns on the GIL; measured
in the runtime, the committer then cost ~115 us per operation and the process topped out near
one core at ~3,300 consumptions/s (docs/benchmarks-enforcement.md). With the committer in a
child process the two run on separate cores.

What it keeps: the child is a plain :class:`~enforcement.ledger.Ledger` on the same database
and runs the same operations through the same group committer (commit.py), so every guarantee
is the database's as before: each operation is applied in a transaction that locks its wallet
(``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL), zero overdraft and
idempotency hold across processes exactly as with two runtimes on one ledger. A result is sent
back only after the transaction holding it committed.

Wire (the child's stdin/stdout, private to the two processes): frames of a 4-byte big-endian
length and a payload. Parent to child: a pickle of ``[(call_id, op), ...]``; child to parent,
one frame per batch: msgpack ``[[call_id, kind, data], ...]`` where ``data`` is a
:class:`~enforcement.ledger.Consumption` in msgpack (``kind`` "consumption": ~1 us each way,
against ~18 us for pickle, measured), or a pickled result or error. The child reads every
frame already in its pipe, runs them as one batch (group commit), answers, and reads again:
the batch grows with the load, as the in-process committer's does.

Failure: if the child exits, every operation it had not answered fails with
:class:`~enforcement.ledger.errors.LedgerUnavailable` (503, retryable: it may or may not have
committed, and a retry with the same idempotency key is safe), and the next submission starts
a new child.

    python -m enforcement.ledger.writer <database-url> [FULL|NORMAL]    # started by LedgerWriter
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from enforcement.ledger.errors import LedgerError, LedgerUnavailable
from enforcement.ledger.models import Consumption

log = logging.getLogger(__name__)

Callback = Callable[[Any, BaseException | None], None]
_LENGTH = 4
_READ_SIZE = 1 << 20


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


_answers_encoder = msgspec.msgpack.Encoder()
_consumption = msgspec.msgpack.Decoder(Consumption)


def _answers_frame(answers: list[tuple[int, Any, BaseException | None]]) -> bytes:
    items = []
    for call_id, result, error in answers:
        if error is not None:
            items.append((call_id, "error", pickle.dumps(error, pickle.HIGHEST_PROTOCOL)))
        elif type(result) is Consumption:
            items.append((call_id, "consumption", _answers_encoder.encode(result)))
        else:
            items.append((call_id, "pickle", pickle.dumps(result, pickle.HIGHEST_PROTOCOL)))
    data = _answers_encoder.encode(items)
    return len(data).to_bytes(_LENGTH, "big") + data


def _answer(kind: str, data: bytes) -> tuple[Any, BaseException | None]:
    if kind == "consumption":
        return _consumption.decode(data), None
    if kind == "error":
        return None, pickle.loads(data)
    return pickle.loads(data), None


class _FrameReader:
    """Length-prefixed frames from a file descriptor (``decode``: pickle by default)."""

    def __init__(self, fd: int, decode: Callable[[bytes], Any] = pickle.loads) -> None:
        self.fd = fd
        self.decode = decode
        self.buffer = bytearray()

    def frames(self, block: bool = True) -> list[Any] | None:
        """Every complete frame buffered or readable now; None at EOF. Blocking, waits for
        the first frame; on a non-blocking descriptor, reads what is there (maybe nothing)."""
        out: list[Any] = []
        while True:
            out.extend(self._complete())
            if out:
                return out
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                if block:
                    raise
                return out
            if not data:
                return None
            self.buffer += data

    def _complete(self) -> list[Any]:
        out, pos, buffer = [], 0, self.buffer
        while len(buffer) - pos >= _LENGTH:
            size = int.from_bytes(buffer[pos : pos + _LENGTH], "big")
            end = pos + _LENGTH + size
            if end > len(buffer):
                break
            out.append(self.decode(bytes(buffer[pos + _LENGTH : end])))
            pos = end
        del buffer[:pos]
        return out


def _portable(error: BaseException | None) -> BaseException | None:
    """Errors cross the pipe as LedgerErrors (pickled) or as a LedgerUnavailable message."""
    if error is None or isinstance(error, LedgerError):
        return error
    return LedgerUnavailable(f"the ledger failed: {type(error).__name__}: {error}")


# --- the child -------------------------------------------------------------------------------


def _answer_to(answers: list[tuple[int, Any, BaseException | None]], call_id: int) -> Callback:
    def done(result: Any, error: BaseException | None) -> None:
        answers.append((call_id, result, _portable(error)))

    return done


def serve(url: str, synchronous: str = "FULL") -> None:
    """The child's loop: read what is queued, run it as one batch, answer, repeat."""
    from sqlalchemy.engine import make_url

    from enforcement.ledger.checkpoints import WalCheckpoints
    from enforcement.ledger.commit import _Pending
    from enforcement.ledger.ledger import Ledger

    # SQLite: the writer's commits leave WAL checkpoints to WalCheckpoints (checkpoints.py).
    parsed = make_url(url)
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    ledger = Ledger.from_url(
        url, sqlite_synchronous=synchronous, sqlite_autocheckpoint=database is None
    )
    committer = ledger._committer
    committer._writer()  # connect now: the first operations should not wait for it
    checkpoints = None if database is None else WalCheckpoints(database)
    if checkpoints is not None:
        checkpoints.start()
    reader = _FrameReader(sys.stdin.fileno())
    out = sys.stdout.fileno()
    try:
        while True:
            frames = reader.frames()
            if frames is None:
                return  # the parent closed our stdin: done
            calls = [call for frame in frames for call in frame]
            answers: list[tuple[int, Any, BaseException | None]] = []
            pending = [_Pending(op, _answer_to(answers, cid)) for cid, op in calls]
            for start in range(0, len(pending), committer._max_batch):
                try:
                    committer._execute(pending[start : start + committer._max_batch])
                except BaseException:  # each pending of that batch got the error already
                    log.exception("ledger writer batch failed")
            data = _answers_frame(answers)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(out, view) :]
            except BrokenPipeError:
                # The parent is gone (e.g. killed): what this batch applied is committed, and
                # its clients retry with the same keys. Nothing more will be asked.
                return
            if checkpoints is not None:  # answered: now the WAL, if it is due
                checkpoints.after_batch()
    finally:
        if checkpoints is not None:
            checkpoints.stop()
        ledger.close()


# --- the parent ------------------------------------------------------------------------------


class LedgerWriter:
    """Submits ledger operations to a child process (see the module docstring).

    ``submit(op, callback)`` never blocks on the database; submissions made in one event-loop
    iteration leave in one write. ``callback(result, error)`` runs once the child answered:
    on ``loop`` when one is given (its answers are read there, like any socket of the loop),
    else on this writer's reader thread. On the loop, a batch of answers costs no thread
    wake-up and no GIL hand-off (a reader thread waiting for the GIL held by a busy loop can
    wait up to the interpreter's switch interval, 5 ms; measured: docs/benchmarks-enforcement.md).
    """

    def __init__(
        self, url: str, synchronous: str = "FULL", loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.url = url
        self.synchronous = synchronous
        self.loop = loop
        self._lock = threading.Lock()  # state below; never held while writing to the pipe
        self._write_lock = threading.Lock()  # one frame at a time into the child's stdin
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._waiting: dict[int, tuple[Callback, subprocess.Popen[bytes] | None]] = {}
        self._outbox: list[tuple[int, Any]] = []
        self._flush_scheduled = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            self._live()

    def _live(self) -> subprocess.Popen[bytes]:
        """The running child, started if needed (``_lock`` held)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        proc = subprocess.Popen(
            [sys.executable, "-m", "enforcement.ledger.writer", self.url, self.synchronous],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._proc = proc
        if self.loop is None:
            threading.Thread(
                target=self._read, args=(proc,), name="ledger-writer-reader", daemon=True
            ).start()
        else:
            self._watch(proc)
        log.info("ledger writer process started", extra={"fields": {"pid": proc.pid}})
        return proc

    def submit(self, op: Any, callback: Callback) -> None:
        with self._lock:
            if self._closed:
                raise LedgerUnavailable("the ledger is closed")
            call_id = next(self._ids)
            self._waiting[call_id] = (callback, None)
            self._outbox.append((call_id, op))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # not on an event loop: send now
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                self._flush_scheduled = False
                calls, self._outbox = self._outbox, []
                if not calls:
                    return
                proc = self._live()
                for call_id, _ in calls:  # sent to this child: it answers or they fail
                    entry = self._waiting.get(call_id)
                    if entry is not None:
                        self._waiting[call_id] = (entry[0], proc)
            # Outside _lock: a full pipe must not stop the reader from taking answers.
            try:
                assert proc.stdin is not None
                proc.stdin.write(_frame(calls))
                proc.stdin.flush()
            except (OSError, ValueError) as exc:
                # The reader fails what the child did not answer when it sees the exit.
                log.warning("ledger writer process unreachable: %r", exc)

    def _deliver(self, frames: list[Any]) -> None:
        for answers in frames:
            for call_id, kind, data in answers:
                with self._lock:
                    entry = self._waiting.pop(call_id, None)
                if entry is not None:
                    entry[0](*_answer(kind, data))

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """The reader thread (no loop): answers until the child's stdout closes."""
        assert proc.stdout is not None
        reader = _FrameReader(proc.stdout.fileno(), msgspec.msgpack.decode)
        try:
            while True:
                frames = reader.frames()
                if frames is None:
                    break
                self._deliver(frames)
        except Exception:
            log.exception("ledger writer: reading answers failed")
        self._exited(proc)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Read the child's answers on the loop (from any thread)."""
        assert proc.stdout is not None and self.loop is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        reader = _FrameReader(fd, msgspec.msgpack.decode)

        def readable() -> None:
            try:
                frames = reader.frames(block=False)
                if frames:
                    self._deliver(frames)
                if frames is not None:
                    return
            except Exception:
                log.exception("ledger writer: reading answers failed")
            assert self.loop is not None
            self.loop.remove_reader(fd)
            # Reaping may wait for the child's exit: not on the loop.
            threading.Thread(target=self._exited, args=(proc,), daemon=True).start()

        if _on_loop(self.loop):
            self.loop.add_reader(fd, readable)
        else:
            self.loop.call_soon_threadsafe(self.loop.add_reader, fd, readable)

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        """The child's stdout closed: what it had and did not answer fails (retryable)."""
        code = proc.wait()
        with self._lock:
            if self._proc is proc:
                self._proc = None
            # What was sent to this child and not answered may or may not have committed.
            lost = [k for k, (_, owner) in self._waiting.items() if owner is proc]
            callbacks = [self._waiting.pop(k)[0] for k in lost]
        if callbacks and not self._closed:
            log.error(
                "ledger writer process exited (code %s) with %d operations unanswered",
                code,
                len(callbacks),
            )
        for callback in callbacks:
            callback(None, LedgerUnavailable("the ledger writer stopped; retry with the same key"))

    def close(self, timeout: float = 20.0) -> None:
        """Let the child finish what it received, then stop it (not on ``loop``, which
        must go on reading the last answers)."""
        self.flush()
        with self._lock:
            self._closed = True
            proc = self._proc
        if proc is None:
            return
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("ledger writer process did not stop in %ss; killing it", timeout)
            proc.kill()
            proc.wait(5)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # A terminal's Ctrl-C reaches the whole process group: the runtime stops this child by
    # closing its stdin once the answers in flight are in (LedgerWriter.close), not mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m enforcement.ledger.writer <database-url> [FULL|NORMAL]")
    serve(sys.argv[1], *(sys.argv[2:]))


if __name__ == "__main__":
    main()
